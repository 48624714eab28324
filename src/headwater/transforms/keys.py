"""Keys and ids as text: the one spelling rule that every engine applies.

An aggregation key (``windowed_metrics``' ``key_field``) and a dedup id (``DeduplicateById``) are
compared, grouped and written as *text*, spelt from the record's value by :func:`key_text`. Every
engine calls it -- the record path, the columnar batch path and the columnar replay (whose
vectorized kernels only take values whose spelling they reproduce exactly, and hand every other
record to this function) -- so a key never depends on the engine, the file or the window, and the
output ``key`` column is a string in every file.

================================  ==============================================================
value                             text
================================  ==============================================================
``str``                           itself: ``"user0"`` -> ``user0``
``int``                           its decimal digits: ``1`` and ``"1"`` are one key, ``1``
``float``, finite                 an integral one as an int (``1.0`` -> ``1``, so ``1``, ``1.0``
                                  and ``"1"`` are one key); any other as Python's shortest repr
                                  (``1.5`` -> ``1.5``, ``1e-07`` -> ``1e-07``)
``bytes``                         their UTF-8 text, or ``0x<hex>`` when they are not UTF-8
``uuid.UUID``                     its canonical text
``tuple`` (composite ids only)    the JSON list of its parts' texts: ``("a", 1)`` -> ``["a","1"]``
================================  ==============================================================

Refused, so that the record becomes a dead letter naming the field and the value:
``None``, a missing value and the empty string (:class:`MissingKeyError`); ``bool`` (``true`` is
more likely a schema slip than a key), NaN and infinities, lists, dicts and every other type, and
a string that is not Unicode text -- a lone surrogate such as ``"\\ud800"``, which JSON can spell
as an escape but UTF-8 cannot encode, so no output file could hold it (:class:`InvalidKeyError`).
Callers add their own rules on the text: an aggregation key must not be blank.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

__all__ = ["InvalidKeyError", "MissingKeyError", "key_text", "unicode_problem"]

_EXCERPT_CHARS = 40


class MissingKeyError(ValueError):
    """A key or id is absent, ``None`` or empty."""


class InvalidKeyError(ValueError):
    """A key or id has no text form: a bool, NaN, a container, text that is not Unicode ..."""


def unicode_problem(text: str) -> str | None:
    """What in ``text`` UTF-8 cannot encode (a lone surrogate), or ``None`` when it is fine.

    The answer quotes the surrogate as an escape, so it is safe to print and to write into a dead
    letter.

    >>> print(unicode_problem("ab\\ud800"))
    a lone surrogate '\\ud800' at character 2, which UTF-8 cannot encode (not Unicode text)
    >>> unicode_problem("日本") is None
    True
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"a lone surrogate {text[exc.start]!a} at character {exc.start}, which UTF-8 cannot "
            "encode (not Unicode text)"
        )
    return None


def _excerpt(value: Any) -> str:
    text = ascii(value)  # escapes, never a raw surrogate: the message must be writable itself
    return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "..."


def key_text(
    value: Any,
    what: str = "key",
    *,
    missing: type[ValueError] = MissingKeyError,
    invalid: type[ValueError] = InvalidKeyError,
) -> str:
    """The text a key or id is compared, grouped and written as (the table in the module doc).

    ``what`` names the value in errors (``"key field 'user_id'"``); ``missing`` and ``invalid``
    are the error types raised (dedup raises its own ``MissingIdError``/``InvalidIdError``).

    >>> [key_text(v) for v in ("u1", 1, 1.0, "1", 2.5, b"ab")]
    ['u1', '1', '1', '1', '2.5', 'ab']
    >>> key_text(True, "key field 'user_id'")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    headwater.transforms.keys.InvalidKeyError: key field 'user_id'=True is a bool; ...
    """
    if value is None:
        raise missing(f"{what} is None")
    if isinstance(value, str):
        if not value:
            raise missing(f"{what} is empty")
        problem = unicode_problem(value)
        if problem is not None:
            raise invalid(f"{what}={_excerpt(value)} holds {problem}")
        return value
    if isinstance(value, bool):
        raise invalid(f"{what}={value!r} is a bool; expected text or a number")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise invalid(f"{what}={value!r} is not a finite number")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (bytes, bytearray)):
        if not value:
            raise missing(f"{what} is empty")
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return "0x" + bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, tuple):
        if not value:
            raise missing(f"{what} is an empty tuple")
        parts = [
            key_text(part, f"{what} part {i}", missing=missing, invalid=invalid)
            for i, part in enumerate(value)
        ]
        return json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    raise invalid(
        f"{what}={_excerpt(value)} is a {type(value).__name__}; expected text or a number "
        "(str, int, float, bytes, UUID, or a tuple of them)"
    )
