"""Shards: a stable shard of a text (which file a row goes to, which key a streaming id is held
under), and how many keys a stream's stateful steps may be spread over.

Beam-free: the command line's flag parser uses it without importing Apache Beam. The batches a
bundle sends to keyed shards are :class:`headwater.core.batches.ShardBatches`.
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = [
    "DEFAULT_SHARDS",
    "MAX_SHARDS",
    "checked_shard_count",
    "shard_count_problem",
    "stable_shard",
]

#: Keys a stream's stateful steps (event-time dedup, late routing) are spread over by default.
DEFAULT_SHARDS = 16
#: The most keys they may be spread over.
MAX_SHARDS = 4096


def shard_count_problem(count: Any) -> str | None:
    """What is wrong with ``count`` as a number of shards, or ``None`` when it is one.

    >>> shard_count_problem(16) is None, shard_count_problem(0)
    (True, 'must be a whole number from 1 to 4096')
    """
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_SHARDS:
        return f"must be a whole number from 1 to {MAX_SHARDS}"
    return None


def checked_shard_count(count: Any, *, name: str = "shards") -> int:
    """``count`` when it is a number of shards; else ``ValueError`` naming ``name`` and it.

    >>> checked_shard_count(8)
    8
    >>> checked_shard_count(0)
    Traceback (most recent call last):
    ValueError: shards=0 must be a whole number from 1 to 4096
    """
    problem = shard_count_problem(count)
    if problem is not None:
        raise ValueError(f"{name}={count!r} {problem}")
    return count


def stable_shard(text: str, num_shards: int) -> int:
    """A shard in ``[0, num_shards)`` from ``text``, the same in every process and run.

    (Python's ``hash`` of a string is salted per process, so it cannot be used.)

    >>> stable_shard('{"a":1}', 4) == stable_shard('{"a":1}', 4)
    True
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_shards
