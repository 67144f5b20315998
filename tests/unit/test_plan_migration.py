"""Plans stored by earlier versions still load, into the same plan, and write the same JSON.

tests/data/plans holds plans as the code before plans were pydantic models wrote them
(tests/data/plans/README.md): the plan's JSON, its id, the stored (masked) form and the
secrets file. The supervisor and manager read that JSON as plain data, so the JSON today's
code writes must be the same, byte for byte: field names, order, nesting, None written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from localaistack.plan import PLAN_SCHEMA_VERSION, ExecutionPlan
from localaistack.store import secrets

PLANS = Path(__file__).resolve().parent.parent / "data" / "plans"
NAMES = ["llama-native-v1", "box-container-v1"]


def text(name: str, suffix: str = ".json") -> str:
    return (PLANS / f"{name}{suffix}").read_text().rstrip("\n")


@pytest.mark.parametrize("name", NAMES)
def test_a_stored_plan_loads_and_writes_the_same_json(name: str) -> None:
    stored = text(name)
    plan = ExecutionPlan.model_validate_json(stored)
    assert plan.schema_version == PLAN_SCHEMA_VERSION
    assert plan.model_dump_json() == stored  # the shape the supervisor reads
    assert plan.model_dump(mode="json") == json.loads(stored)
    again = ExecutionPlan.model_validate_json(plan.model_dump_json())
    assert again == plan and hash(again) == hash(plan)
    assert ExecutionPlan.model_validate(json.loads(stored)) == plan  # as manager reads it
    assert plan.plan_id == text(name, ".plan_id")


@pytest.mark.parametrize("name", NAMES)
def test_the_stored_masked_form_loads_with_the_same_id(name: str) -> None:
    """The instances.plan column (secrets masked) of an earlier version: the plan
    `las inspect` and `las start` read, with the id `las plan` showed."""
    column = json.loads(text(name, ".stored.json"))
    plan = ExecutionPlan.model_validate(column)
    assert plan.plan_id == text(name, ".plan_id")
    hidden = json.loads(text(name, ".secrets.json"))
    real = ExecutionPlan.model_validate(secrets.reveal(plan.model_dump(mode="json"), hidden))
    original = ExecutionPlan.model_validate_json(text(name))
    assert real == original.model_copy(update={"shown": ()})  # the stored form has it applied
    # what today's store would write for it is what the earlier version wrote
    assert secrets.split(json.loads(text(name))) == (column, hidden)


def test_what_the_fixtures_cover() -> None:
    native = ExecutionPlan.model_validate_json(text("llama-native-v1"))
    assert native.native is not None and native.container is None
    assert native.native.pinned and native.native.uid == 65534 and native.gpus
    assert any(e.secret for e in native.native.env)
    box = ExecutionPlan.model_validate_json(text("box-container-v1"))
    assert box.container is not None and box.native is None
    assert len(box.ports) == 2 and len(box.container.volumes) == 2 and box.shown
    assert box.health is not None and box.health.kind == "command"
    assert box.restart.policy == "on-failure" and box.stop.signal == "SIGINT"
    assert isinstance(box.container.argv, tuple) and isinstance(box.health.start_timeout, float)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"surprise": 1}, "surprise"),  # an unknown field
        ({"mode": "vm"}, "mode"),
        ({"schema_version": "1"}, "schema_version"),  # strict: no "1" for 1
        (
            {"ports": [{"name": "x", "container_port": 0, "host_ip": "::1", "host_port": 1}]},
            "ports.0.container_port",
        ),
        ({"native": {"argv": []}}, "native.argv"),
        ({"resources": {"gpus": True}}, "resources.gpus"),
    ],
)
def test_a_plan_that_does_not_fit_is_a_value_error(change: dict[str, object], where: str) -> None:
    data = {**json.loads(text("llama-native-v1")), **change}
    with pytest.raises(ValueError, match=r"validation error") as info:
        ExecutionPlan.model_validate(data)
    assert isinstance(info.value, ValidationError)
    assert where in str(info.value)


def test_a_plan_is_frozen() -> None:
    plan = ExecutionPlan.model_validate_json(text("box-container-v1"))
    with pytest.raises(ValidationError, match="frozen"):
        plan.mode = "native"  # type: ignore[misc]
