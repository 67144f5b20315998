"""How the engines' error messages are read (runtime/engines/failures.py)."""

from __future__ import annotations

import pytest

from localaistack.runtime.engines import failures

REMOVING = "Error response from daemon: removal of container 9575036aba83 is already in progress\n"


@pytest.mark.parametrize(
    ("stderr", "gone", "removing"),
    [
        ("Error: No such container: abc\n", True, False),
        ('Error: no container with name or id "abc" found: no such container\n', True, False),
        (REMOVING, False, True),
        ("Error response from daemon: conflict: unable to remove\n", False, False),
    ],
)
def test_a_removal_someone_else_does_is_not_a_failure(
    stderr: str, gone: bool, removing: bool
) -> None:
    assert failures.not_found(stderr) is gone
    assert failures.being_removed(stderr) is removing
