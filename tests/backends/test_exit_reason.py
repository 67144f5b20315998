"""The one function that words a run's end (runtime/backend.py's describe_exit)."""

from __future__ import annotations

import pytest

from localaistack.runtime.backend import ExitStatus, describe_exit

KILLED = "stopped: did not exit within the stop timeout after SIGTERM; killed with SIGKILL"


@pytest.mark.parametrize(
    ("ex", "by_request", "killed", "last", "want"),
    [
        (ExitStatus(code=0), False, False, "", ("stopped", "exited on its own with code 0")),
        (ExitStatus(code=3), False, False, "last output: x",
         ("failed", "exited with code 3; last output: x")),
        (ExitStatus(code=139, signal="SIGSEGV"), False, False, "",  # a container's 128+N
         ("failed", "exited with code 139 (SIGSEGV)")),
        (ExitStatus(signal="SIGSEGV", core_dumped=True), False, False, "error: boom",
         ("failed", "killed by signal SIGSEGV (core dumped); error: boom")),
        (ExitStatus(signal="SIGTERM"), True, False, "", ("stopped", "stopped: exited on SIGTERM")),
        (ExitStatus(code=143, signal="SIGTERM"), True, False, "",
         ("stopped", "stopped: exited on SIGTERM")),
        (ExitStatus(signal="SIGKILL"), True, True, "", ("stopped", KILLED)),
        (ExitStatus(code=137, signal="SIGKILL", killed=True), True, False, "",
         ("stopped", KILLED)),
        (ExitStatus(code=2), True, False, "",
         ("stopped", "stopped: exited with code 2 after SIGTERM")),
        (ExitStatus(signal="SIGINT"), True, False, "",
         ("stopped", "stopped: ended by SIGINT after SIGTERM")),
        (ExitStatus(code=137, signal="SIGKILL", oom="out of memory (limit 64MiB; x)"), False,
         False, "", ("failed", "out of memory (limit 64MiB; x)")),
        (ExitStatus(lost="lost: the container 0123abcd4567 is gone", inspect_error="no such"),
         False, False, "last output: y",
         ("failed", "lost: the container 0123abcd4567 is gone (last output: y; inspect failed: "
          "no such)")),
    ],
)  # fmt: skip
def test_words(
    ex: ExitStatus, by_request: bool, killed: bool, last: str, want: tuple[str, str]
) -> None:
    assert describe_exit(ex, by_request, killed, "SIGTERM", last) == want


def test_an_oom_kill_during_a_stop_is_the_stop() -> None:
    ex = ExitStatus(code=137, signal="SIGKILL", killed=True, oom="out of memory (...)")
    assert describe_exit(ex, True, False, "SIGTERM", "") == ("stopped", KILLED)
