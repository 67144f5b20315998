"""Sizes and durations as people write them in manifests and policies."""

from __future__ import annotations

import math

import pytest

from localaistack.units import format_duration, format_size, parse_duration, parse_size

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8GB", 8 * GIB),  # LocalAIStack's spelling, read as binary like the original project
        ("8GiB", 8 * GIB),
        ("8G", 8 * GIB),
        ("8gib", 8 * GIB),
        ("512MiB", 512 * MIB),
        ("512M", 512 * MIB),
        ("512MB", 512 * MIB),
        ("1024K", 1024 * KIB),
        ("1024", 1024),
        ("0", 0),
        ("1.5GiB", 3 * GIB // 2),
        (" 64 MiB ", 64 * MIB),
        ("2T", 2 << 40),
        (1024, 1024),
        (0, 0),
        (2.0, 2),
    ],
)
def test_parse_size_accepts(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("-1", "negative"),
        ("-5MiB", "negative"),
        (-1, "negative"),
        (-0.5, "negative"),
        ("lots", "expected e.g."),
        ("5 parsecs", "expected e.g."),
        ("", "expected e.g."),
        ("GiB", "expected e.g."),
        ("8 GiB GiB", "expected e.g."),
        ("1e3", "expected e.g."),
        (True, "expected e.g."),
        (False, "expected e.g."),
        (None, "expected e.g."),
        ([1], "expected e.g."),
        (math.inf, "finite"),
        (math.nan, "finite"),
    ],
)
def test_parse_size_rejects(value: object, why: str) -> None:
    with pytest.raises(ValueError, match="invalid size") as exc:
        parse_size(value)
    assert why in str(exc.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("2", 2.0),
        ("1.5s", 1.5),
        ("0", 0.0),
        (3, 3.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration_accepts(text: object, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value", ["soon", "-1s", "-1", "", "10 parsecs", "1d", -1, -0.1, True, None, math.inf, math.nan]
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


def test_format_round_trips_what_people_write() -> None:
    assert format_size(512 * MIB) == "512.0MiB"
    assert format_size(100) == "100B"
    assert parse_size(format_size(8 * GIB)) == 8 * GIB
    assert format_duration(0.5) == "500ms"
    assert format_duration(10) == "10s"
    assert format_duration(150) == "2m30s"
    assert parse_duration(format_duration(10)) == 10
