"""ops/problems.py: every LasError survives problem_of -> error_of with its class, words,
hint and exit code; the status follows COMMON.md's mapping."""

from __future__ import annotations

import pytest

from localaistack import errors as err_mod
from localaistack.ops.problems import PREFIX, error_of, plain_problem, problem_of

CASES = [
    (err_mod.UsageError, 400),
    (err_mod.ManifestError, 422),
    (err_mod.PolicyError, 422),
    (err_mod.HardwareProfileError, 422),
    (err_mod.PolicyViolation, 403),
    (err_mod.NoCompatibleMode, 409),
    (err_mod.RequirementUnmet, 409),
    (err_mod.AdmissionRefused, 409),
    (err_mod.InstanceNotFound, 404),
    (err_mod.InstanceConflict, 409),
    (err_mod.StartFailed, 422),
    (err_mod.RecoveryFailed, 409),
    (err_mod.NotSupported, 400),
    (err_mod.ExecutionError, 409),
    (err_mod.StoreError, 503),
]


@pytest.mark.parametrize(("cls", "status"), CASES)
def test_round_trip(cls: type[err_mod.LasError], status: int) -> None:
    err = cls("it broke", "do this")
    got_status, body = problem_of(err)
    assert got_status == status == body["status"]
    assert body["detail"] == "it broke" and body["hint"] == "do this"
    assert body["exit_code"] == cls.exit_code
    back = error_of(got_status, body)
    assert type(back) is cls
    assert (back.message, back.hint, back.exit_code) == ("it broke", "do this", cls.exit_code)


def test_names() -> None:
    _, body = problem_of(err_mod.InstanceNotFound("no instance 'x'"))
    assert body["type"] == PREFIX + "instance-not-found"
    assert body["title"] == "Instance not found"


def test_manifest_problems_and_store_cause() -> None:
    _, body = problem_of(err_mod.ManifestError("bad", problems=["a: missing", "b: wrong"]))
    back = error_of(422, body)
    assert isinstance(back, err_mod.ManifestError) and back.problems == ["a: missing", "b: wrong"]
    _, body = problem_of(err_mod.StoreError("disk full", cause="full"))
    store = error_of(503, body)
    assert isinstance(store, err_mod.StoreError) and store.cause == "full"


def test_unknown_and_plain_problems() -> None:
    back = error_of(401, plain_problem(401, "Unauthorized", "a bearer token is needed"))
    assert isinstance(back, err_mod.UsageError) and back.message == "a bearer token is needed"
    assert back.exit_code == 2
    other = error_of(502, {"no": "problem"})
    assert type(other) is err_mod.LasError and "502" in other.message
