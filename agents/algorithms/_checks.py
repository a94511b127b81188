"""Range checks of config fields, with messages that name the field and its value."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def check_fields(
    config: Any,
    prefix: str,
    *,
    unit: Iterable[str] = (),
    at_least_one: Iterable[str] = (),
    positive: Iterable[str] = (),
    non_negative: Iterable[str] = (),
) -> None:
    """Raise `ValueError` for the first named field of `config` outside its range.

    Args:
        config: a config dataclass.
        prefix: how the config is spelled on the command line (`sac`, `bro`, …).
        unit: fields that must lie in [0, 1].
        at_least_one: fields that must be ≥ 1.
        positive: fields that must be > 0 (NaN fails).
        non_negative: fields that must be ≥ 0 (NaN fails).
    """
    rules = (
        (unit, lambda v: 0 <= v <= 1, "in [0, 1]"),
        (at_least_one, lambda v: v >= 1, ">= 1"),
        (positive, lambda v: v > 0, "> 0"),
        (non_negative, lambda v: v >= 0, ">= 0"),
    )
    for names, ok, what in rules:
        for name in names:
            value = getattr(config, name)
            if not ok(value):
                raise ValueError(f"{prefix}.{name} must be {what}, got {value}")
