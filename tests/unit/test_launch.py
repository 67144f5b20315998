"""``las run``'s click-free front end (cli/launch.py) reads a command line as click does.

``parse_simple`` either returns exactly the parameters click's ``run`` command would get,
or None (then click handles the command line, errors and --help included).
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localaistack.cli import lifecycle  # noqa: F401  (registers `run`)
from localaistack.cli.launch import RunArgs, parse_simple
from localaistack.cli.main import cli

RUN = cli.commands["run"]


def click_params(args: list[str]) -> RunArgs | None:
    """What click's `run` would be called with, or None if click rejects the line."""
    try:
        ctx = RUN.make_context("run", list(args))
    except (click.exceptions.UsageError, click.exceptions.Exit):
        return None
    p = ctx.params
    if p["hardware_file"] is not None:
        return None
    return RunArgs(p["module"], p["mode"], p["sets"], p["policy_file"], p["name"], p["detach"])


TOKENS = st.sampled_from(
    [
        "-d", "--detach", "--name", "--name=web", "--mode", "--mode=native", "--mode=gpu",
        "native", "container", "--set", "--set=a=1", "a=1", "--policy", "--policy=p.yaml",
        "p.yaml", "mod", "other.yaml", "--", "-", "--help", "-h", "--hardware", "hw.json",
        "-x", "--detach=1", "", "--name=", "-dn", "=", "--set=",
    ]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(TOKENS, max_size=7))
def test_parse_simple_agrees_with_click(args: list[str]) -> None:
    fast = parse_simple(args)
    if fast is not None:
        assert fast == click_params(args), args


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["mod"], RunArgs("mod")),
        (["-d", "mod", "--name", "x"], RunArgs("mod", name="x", detach=True)),
        (
            ["mod", "--set", "a=1", "--set=b=2", "--mode=container", "--policy", "p.yaml"],
            RunArgs("mod", "container", ("a=1", "b=2"), Path("p.yaml")),
        ),
    ],
)
def test_plain_forms_skip_click(args: list[str], expected: RunArgs) -> None:
    assert parse_simple(args) == expected == click_params(args)


@pytest.mark.parametrize(
    "args",
    [[], ["--help"], ["mod", "--hardware", "h.json"], ["mod", "--", "x"], ["a", "b"],
     ["mod", "--name", "--detach"], ["mod", "--mode", "gpu"], ["mod", "--name"], ["-dn", "x"]],
)  # fmt: skip
def test_other_forms_go_to_click(args: list[str]) -> None:
    assert parse_simple(args) is None
