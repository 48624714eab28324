"""Stable step names: the full labels of each ready-made pipeline's steps, checked in.

Dataflow's ``--update`` replaces a running streaming job by matching the old job's steps to the
new graph's by full label (``WindowedMetrics/Process/Deduplicate``): a step whose label changed
starts with empty state (its dedup table, its open windows) unless ``--transform_name_mapping``
maps the old label (a prefix: a composite's label maps all its steps) to the new one. The labels
are also the step names users see in monitoring.

So the labels of every graph a pipeline builds (per source and mode: ``files-batch``,
``kafka-streaming`` ...) are checked in under ``step-names/`` next to this module, one label a
line in ``<pipeline>-<variant>.txt``, and a test fails on any change with how to map it.
``renamed.json`` keeps the labels of earlier releases and what each became, so that a job
started from an earlier release can still be updated: ``{"pipeline": {"old": "new"}}``.

:func:`check_transform_name_mapping` runs before ``headwater run --update`` submits anything: a
key of ``--transform_name_mapping`` that is no step of the pipeline (in this release, an earlier
one or the new graph) is refused, naming it.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

__all__ = [
    "STEP_NAMES_DIR",
    "check_mapping_is_json",
    "check_transform_name_mapping",
    "check_update",
    "graph_step_names",
    "released_step_names",
    "renamed_steps",
]

#: Where the checked-in labels live: ``<pipeline>-<variant>.txt`` and ``renamed.json`` (a name
#: Python cannot import, so packaging takes the folder as data, not as a package).
STEP_NAMES_DIR = Path(__file__).resolve().parent / "step-names"


def graph_step_names(pipeline: Any) -> list[str]:
    """The full labels of every step of a built (not run) ``beam.Pipeline``, sorted."""
    names: set[str] = set()
    todo = list(pipeline.transforms_stack[0].parts)
    while todo:
        applied = todo.pop()
        names.add(applied.full_label)
        todo.extend(applied.parts)
    return sorted(names)


@cache
def renamed_steps() -> dict[str, dict[str, str]]:
    """Labels of earlier releases and what they became, per pipeline (``renamed.json``)."""
    path = STEP_NAMES_DIR / "renamed.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    return {str(name): dict(mapping) for name, mapping in data.items()}


@cache
def released_step_names(pipeline: str) -> frozenset[str]:
    """Every label ``pipeline`` has had: this release's (all variants) and earlier ones'."""
    names: set[str] = set(renamed_steps().get(pipeline, {}))
    for path in STEP_NAMES_DIR.glob(f"{pipeline}-*.txt"):
        names.update(line for line in path.read_text(encoding="utf-8").splitlines() if line)
    return frozenset(names)


def check_transform_name_mapping(
    mapping: Mapping[str, str] | None, *, pipeline: str, graph: Iterable[str]
) -> None:
    """Refuses a ``--transform_name_mapping`` key that is no step label of ``pipeline``.

    ``graph``: the labels of the new graph. A key must be a label of the running job: this
    release's or an earlier one's (the checked-in names) or the new graph's. ``ValueError``
    names the first unknown key and the closest known label.
    """
    if not mapping:
        return
    known = released_step_names(pipeline) | set(graph)
    for key in mapping:
        if key in known:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"--transform_name_mapping: {key!r} is not a step of {pipeline} (a key is the "
            f"label of a step of the running job, e.g. {sorted(known)[0]!r}){hint}"
        )


def check_mapping_is_json(argv: Iterable[str]) -> None:
    """Refuses a ``--transform_name_mapping`` on ``argv`` that is not JSON, naming the flag."""
    args = list(argv)
    for i, arg in enumerate(args):
        name, given, text = arg.partition("=")
        if name != "--transform_name_mapping":
            continue
        if not given:
            text = args[i + 1] if i + 1 < len(args) else ""
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"{exc.msg} at character {exc.pos}"
            raise ValueError(
                f"--transform_name_mapping is not JSON ({where}): give an object of "
                '"old step label": "new step label", e.g. '
                '--transform_name_mapping=\'{"WindowedMetrics/Process": "WindowedMetrics/Steps"}\''
            ) from None


def check_update(pipeline: Any, name: str, options: Any) -> None:
    """Before an ``--update`` is submitted: the mapping's keys are steps of ``name``."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    gcp = options.view_as(GoogleCloudOptions)
    if gcp.update and isinstance(gcp.transform_name_mapping, Mapping):
        check_transform_name_mapping(
            gcp.transform_name_mapping, pipeline=name, graph=graph_step_names(pipeline)
        )
