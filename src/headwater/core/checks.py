"""Argument checks shared by the public transforms (one wording for each rule)."""

from __future__ import annotations

from typing import Any

__all__ = ["check_count"]


def check_count(name: str, value: Any) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is an integer >= 1 (a bool is not).

    >>> check_count("num_shards", 0)
    Traceback (most recent call last):
    ...
    ValueError: num_shards=0 must be an integer >= 1
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1")
