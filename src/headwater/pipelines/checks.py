"""What a run checks around itself: output paths before it starts, its data after it ends.

Before the graph is built, :func:`check_output_paths` refuses an output that cannot be written
(a path that is a file, or lies under one; a folder without write permission) with one line
naming the flag, and creates the folders of ``--summary_json`` and ``--report`` -- instead of a
worker's traceback mid-run or a failure after the run.

After a run that waited for its result, :func:`check_data` decides whether the run may look like
a success to a scheduler; the summary carries its verdict (``data_check``), and the command line
exits with status 3 (:class:`DataCheckError`) when it failed: records came in and none reached
the output, or the dead-letter rate is above ``--max_dead_letter_rate``. When most records became
dead letters it logs a warning with the top reason, taken from a sample of the dead letters
written (or from the per-stage counters when they went to a topic), and a hint computed from
their payloads: "the event_time values look like epoch milliseconds" for a wrong
``--event_time_unit``, "did you mean 'amount'?" for a misspelt field. The hint shows field
names and event times, never other payload values.
"""

from __future__ import annotations

import collections
import datetime as dt
import difflib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from headwater.pipelines.options import value

__all__ = [
    "DATA_CHECK_EXIT",
    "DataCheckError",
    "OutputPathError",
    "Diagnosis",
    "check_data",
    "check_output_paths",
    "dead_letter_stages",
    "diagnose",
]

_LOG = logging.getLogger("headwater.pipelines")

#: The command line's exit status for a run that finished but failed its data checks.
DATA_CHECK_EXIT = 3
#: Dead-letter rates from here on get a warning with the top reason, limit or not.
_WARN_RATE = 0.5
_SAMPLE = 2_000
_MIN_FOR_FIELD_HINT = 3
#: Epoch units, and the instants a plausible event time falls between.
_UNIT_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
_PLAUSIBLE = (
    dt.datetime(1990, 1, 1, tzinfo=dt.timezone.utc).timestamp(),
    dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc).timestamp(),
)


class OutputPathError(OSError):
    """An output flag names a place that cannot be written (one line, names the flag)."""


class DataCheckError(RuntimeError):
    """The run finished, but its data must not pass for a success (exit status 3)."""


# ------------------------------------------------------------------------------------------
# Before the run


def _is_local(path: str) -> bool:
    from apache_beam.io.filesystems import FileSystems  # Beam: only when a run checks paths

    return FileSystems.get_scheme(path) in (None, "file")


def _nearest_existing(path: str) -> str:
    current = os.path.abspath(path)
    while not os.path.lexists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def _check_folder(flag: str, folder: str) -> None:
    existing = _nearest_existing(folder)
    if existing == os.path.abspath(folder) and not os.path.isdir(existing):
        raise OutputPathError(f"--{flag}={folder!r} is a file; expected a folder")
    if not os.path.isdir(existing):
        raise OutputPathError(f"--{flag}={folder!r} cannot be created: {existing!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"--{flag}={folder!r} cannot be written: {existing!r} is read-only")


def check_output_paths(
    folders: Mapping[str, str | None], files: Mapping[str, str | None] = {}
) -> None:
    """Refuses unwritable local output ``folders`` (flag -> path); makes the parent folders of
    ``files`` (flag -> path). Remote paths (``gs://``) are left to the run."""
    for flag, folder in folders.items():
        if folder and _is_local(folder):
            _check_folder(flag, folder)
    for flag, path in files.items():
        if not path or not _is_local(path):
            continue
        if os.path.isdir(path):
            raise OutputPathError(f"--{flag}={path!r} is a folder; expected a file name")
        parent = os.path.dirname(os.path.abspath(path))
        _check_folder(flag, parent)
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise OutputPathError(f"--{flag}={path!r}: {exc.strerror}: {parent!r}") from None


# ------------------------------------------------------------------------------------------
# After the run


class Diagnosis:
    """The top reason of a sample of dead letters, and a hint at its cause (or ``None``)."""

    def __init__(self, reason: str | None, share: float, hint: str | None):
        self.reason = reason
        self.share = share
        self.hint = hint

    def __str__(self) -> str:
        if not self.reason:
            return ""
        text = f"top reason ({self.share:.0%} of those sampled): {self.reason}"
        return f"{text}; hint: {self.hint}" if self.hint else text


def _letters(folder: str | None) -> list[Any]:
    """Up to ``_SAMPLE`` dead letters from the files directly in ``folder``."""
    if not folder:
        return []
    from headwater.io.deadletterio import read_dead_letter_file

    base = folder.rstrip("/")
    try:
        from apache_beam.io.filesystems import FileSystems

        matched = FileSystems.match([f"{base}/*.jsonl", f"{base}/*.avro"])
    except Exception:  # nothing written there
        return []
    letters: list[Any] = []
    for path in sorted(m.path for result in matched for m in result.metadata_list):
        try:
            for letter in read_dead_letter_file(path):
                letters.append(letter)
                if len(letters) >= _SAMPLE:
                    return letters
        except Exception as exc:  # a diagnosis must not fail the run
            _LOG.debug("cannot sample dead letters from %s: %s", path, exc)
    return letters


def _shape(message: str) -> str:
    """A message with its numbers and quoted values blanked, to group letters by reason."""
    return re.sub(r"-?\d+(\.\d+)?", "#", message)


def _field(record: Any, path: str) -> Any:
    value = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _records(letters: Sequence[Any]) -> list[dict[str, Any]]:
    records = []
    for letter in letters:
        try:
            record = json.loads(letter.payload)
        except (ValueError, TypeError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _iso(seconds: float) -> str:
    instant = dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)
    return instant.isoformat(timespec="seconds").replace("+00:00", "Z")


def _unit_hint(records: Sequence[Mapping[str, Any]], values: Mapping[str, Any]) -> str | None:
    """``--event_time_unit`` against what the sampled event times look like."""
    field, unit = values.get("event_time_field"), value(values, "event_time_unit")
    if not field:
        return None
    times = [_field(r, field) for r in records]
    numbers = [t for t in times if isinstance(t, (int, float)) and not isinstance(t, bool)]
    texts = [t for t in times if isinstance(t, str)]
    if len(texts) > len(numbers):
        if unit != "iso" and all(re.match(r"^\d{4}-\d\d-\d\d[T ]", t) for t in texts[:50]):
            return (
                f"the {field} values are ISO-8601 text (e.g. {texts[0]!r}): "
                "try --event_time_unit=iso"
            )
        return None
    if not numbers:
        return None
    typical = sorted(numbers)[len(numbers) // 2]
    low, high = _PLAUSIBLE
    fits = [u for u, size in _UNIT_SECONDS.items() if low <= typical * size <= high]
    if not fits or unit in fits:
        return None
    seen = fits[0]
    advice = f"try --event_time_unit={seen}" if seen in ("s", "ms", "us") else "convert them"
    names = _UNIT_NAMES[seen], _UNIT_NAMES.get(unit, unit)
    example = f"{typical} = {_iso(typical * _UNIT_SECONDS[seen])} as {names[0]}"
    return (
        f"the {field} values look like epoch {names[0]}, not {names[1]} (e.g. {example}): " + advice
    )


def _field_hint(
    message: str, records: Sequence[Mapping[str, Any]], values: Mapping[str, Any]
) -> str | None:
    """A field the message names that the records lack, and the closest field they have."""
    fields: set[str] = set()
    for record in records[:200]:
        fields.update(str(k) for k in record)
    if not fields:
        return None
    for name in re.findall(r"'([\w.-]+)'", message):
        if name in fields or "." in name:
            continue
        close = difflib.get_close_matches(name, sorted(fields), n=1)
        flag = next(
            (
                f"--{flag}"
                for flag, value in values.items()
                if isinstance(value, str) and re.search(rf"(^|[:,]){re.escape(name)}($|,)", value)
            ),
            "the flag naming it",
        )
        listed = ", ".join(sorted(fields)[:12])
        if close:
            return f"the records have no field {name!r}; did you mean {close[0]!r}? (see {flag})"
        return f"the records have no field {name!r} (see {flag}); their fields: {listed}"
    return None


def diagnose(letters: Sequence[Any], values: Mapping[str, Any]) -> Diagnosis:
    """The top reason among ``letters`` (``DeadLetter`` values) and a hint at its cause."""
    if not letters:
        return Diagnosis(None, 0.0, None)
    groups: dict[tuple[str, str, str], list[Any]] = collections.defaultdict(list)
    for letter in letters:
        groups[(letter.stage, letter.error_type, _shape(letter.error_message))].append(letter)
    (stage, error_type, _), top = max(groups.items(), key=lambda item: len(item[1]))
    reason = f"{stage}: {error_type}: {top[0].error_message}"
    records = _records(top)
    hint = _unit_hint(records, values)
    if hint is None and len(top) >= _MIN_FOR_FIELD_HINT:  # a field missing from a few is noise
        hint = _field_hint(top[0].error_message, records, values)
    return Diagnosis(reason, len(top) / len(letters), hint)


def _stage_diagnosis(stage_counts: Mapping[str, int]) -> Diagnosis:
    counts = {stage: n for stage, n in stage_counts.items() if n}
    if not counts:
        return Diagnosis(None, 0.0, None)
    stage = max(counts, key=lambda s: counts[s])
    return Diagnosis(
        f"stage {stage} (see the dead letters for the messages)",
        counts[stage] / sum(counts.values()),
        None,
    )


def check_data(
    summary: Mapping[str, Any],
    values: Mapping[str, Any],
    *,
    dead_letter_folder: str | None,
    stage_counts: Mapping[str, int] = {},
) -> dict[str, Any]:
    """Judges a finished run's data; the summary carries the verdict as ``data_check``.

    Returns ``{"passed", "failure", "warning"}``: ``failure`` says why the run must not pass for
    a success (records came in and none reached the output, or the dead-letter rate is above
    ``--max_dead_letter_rate``), ``warning`` (also logged at WARNING) gives the dead-letter rate,
    the top reason and a hint when half the records or more became dead letters. The command
    line turns a failure into :class:`DataCheckError` (exit status 3).
    """
    verdict: dict[str, Any] = {"passed": True, "failure": None, "warning": None}
    records_in, output = summary.get("records_in", 0), summary.get("output", 0)
    dead = summary.get("dead_letter", 0)
    if not records_in:
        return verdict
    rate = dead / records_in
    limit = values.get("max_dead_letter_rate")
    over = limit is not None and rate > limit
    if rate >= _WARN_RATE or over or output == 0:
        letters = _letters(dead_letter_folder) if dead else []
        diagnosis = diagnose(letters, values) if letters else _stage_diagnosis(stage_counts)
        warning = f"{dead} of {records_in} records ({rate:.1%}) became dead letters"
        if diagnosis.reason:
            warning += f"; {diagnosis}"
        _LOG.warning("%s", warning)
        verdict["warning"] = warning
    if output == 0:
        outcomes = ", ".join(
            f"{summary.get(name, 0)} {name}" for name in ("dead_letter", "duplicate", "late")
        )
        verdict["failure"] = f"no output from {records_in} records in ({outcomes})"
    elif over:
        verdict["failure"] = (
            f"dead-letter rate {rate:.2%} ({dead} of {records_in}) is above "
            f"--max_dead_letter_rate={limit:g}"
        )
    verdict["passed"] = verdict["failure"] is None
    return verdict


def dead_letter_stages(result: Any) -> dict[str, int]:
    """``{stage: dead letters}`` from a finished run's ``<stage>.dead_letter`` counters."""
    from apache_beam.metrics.metric import MetricsFilter

    from headwater.core.accounting import NAMESPACE

    counts: dict[str, int] = collections.Counter()
    try:
        query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    except Exception:  # a runner without metrics: no stages to name
        return {}
    for counter in query["counters"]:
        name = counter.key.metric.name
        if name.endswith(".dead_letter"):
            value = counter.committed if counter.committed is not None else counter.attempted
            counts[name.rsplit(".", 1)[0]] += value or 0
    return dict(counts)
