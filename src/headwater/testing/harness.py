"""A harness for testing your own streaming transforms: events in, panes and outcomes out.

:class:`StreamHarness` (or the one-call :func:`run_transform`) replays a list or a JSON-lines file
of events through *your* ``PTransform`` -- or a function ``pcoll -> outputs`` -- as a stream, on
the ``BundleBasedDirectRunner`` (the default) or on Prism, and hands back a
:class:`HarnessResult` holding everything the transform emitted, with each element's window and
pane.

What goes in
    Events in arrival order: ``(record, event_time)`` pairs, or plain records with
    ``event_time=<record -> event time>`` (an :class:`~headwater.windowing.eventtime.
    EventTimeExtractor`, any callable). Control steps go among them:
    ``AdvanceWatermark(to=T)``, ``AdvanceWatermarkPast(window)`` /
    ``AdvanceWatermarkPast("fixed:60s", at=T)`` ("close that window now") and
    ``AdvanceProcessingTime(by="10s")`` (early panes). A path replays a file's lines: decoded
    JSON objects (``lines="json"``), or the raw lines as
    :class:`~headwater.core.records.SourceRecord` values (``lines="bytes"``, for transforms that
    decode and dead-letter bad input themselves). The watermark policy is bounded
    out-of-orderness every ``watermark_every`` records (``max_out_of_orderness``; ``None`` for
    control steps only); see :mod:`headwater.io.timeline` for the exact cadence.
    The transform's input is in the global window, each element stamped with its event time.
What comes out -- the contract
    The transform returns one ``PCollection`` (it becomes the output ``main``), a NamedTuple
    of them (headwater's own: ``Processed``, ``LateRouted``, ``MetricsResult``,
    ``Deduplicated`` ...; fields become output names), a ``dict`` name -> ``PCollection``, or
    a ``ParDo(...).with_outputs(...)`` result (``main`` and the declared tags).
    The *main* output is the one called ``main``, else the first one. The names ``late``,
    ``dead_letter`` and ``duplicate`` have their headwater meaning: :attr:`HarnessResult.late`,
    :attr:`~HarnessResult.dead_letters` and :attr:`~HarnessResult.duplicates` read them (empty
    when the transform has no such output). Every element of every output is captured with
    its timestamp, window and pane (timing ``EARLY``/``ON_TIME``/``LATE``, or ``UNKNOWN``
    before any grouping, and the pane index). The accounting is read from the run's
    ``headwater`` counters (:class:`~headwater.transforms.accounting.CountAs`, or any
    headwater composite that counts: ``ProcessEvents``...), all zero if the transform counts
    nothing.
Ordering
    Values within a pane come in the order the runner emitted them (not promised): compare
    them sorted or as sets. Panes are listed by window start, then pane index.
Runners
    ``BundleBasedDirectRunner`` (Beam's streaming DirectRunner, in this process) and
    ``PrismRunner`` (Beam's Go runner; its Python workers run ``LOOPBACK``, in this process, so
    outputs are captured the same way). Prism is found as :func:`headwater.runners.find_prism`
    finds it: ``--prism_location`` in ``pipeline_args``, ``$HEADWATER_PRISM``, next to the
    Python executable (``make tools`` links it there) or on ``PATH``. The two differ where Beam
    lets runners differ: Prism emits no empty on-time pane, and stamps panes at the window's
    last millisecond.

>>> import apache_beam as beam
>>> from apache_beam.transforms.window import FixedWindows
>>> def count_per_minute(records):
...     return (records | beam.WindowInto(FixedWindows(60))
...                     | beam.combiners.Count.Globally().without_defaults())
>>> result = run_transform(count_per_minute,
...                        [("a", 10), ("b", 20), AdvanceWatermarkPast("fixed:60s", at=0),
...                         ("c", 70)],
...                        max_out_of_orderness=None)
>>> [(str(pane.window), pane.timing, pane.values) for pane in result.panes()]
[('[0.0, 60.0)', 'ON_TIME', (2,)), ('[60.0, 120.0)', 'ON_TIME', (1,))]
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions
from apache_beam.transforms import window as beam_window
from apache_beam.utils.timestamp import Timestamp

from headwater._compat import fix_direct_runner_metrics
from headwater.core.accounting import Accounting
from headwater.io.formats import JsonFormat
from headwater.io.streamreplay import RecordEventTime, read_lines
from headwater.io.timeline import (
    AdvanceProcessingTime,
    AdvanceWatermark,
    AdvanceWatermarkPast,
    build_stream,
    resolve_window,
)
from headwater.runners import PRISM_NO_SPLIT, find_prism
from headwater.testing.assertions import assert_accounting, pane_timing
from headwater.windowing.durations import DurationLike, parse_duration

__all__ = [
    "AdvanceProcessingTime",
    "AdvanceWatermark",
    "AdvanceWatermarkPast",
    "Emitted",
    "HarnessResult",
    "Pane",
    "StreamHarness",
    "run_transform",
]

RUNNERS = ("BundleBasedDirectRunner", "PrismRunner")
LINES = ("json", "bytes")
TIMINGS = ("EARLY", "ON_TIME", "LATE", "UNKNOWN")
_TIMING_ORDER = {timing: rank for rank, timing in enumerate(TIMINGS)}

# Captured elements, by run id and output name. Capture DoFns run in this process on both
# runners (the DirectRunner; Prism's LOOPBACK workers), and find this dict by module.
_CAPTURED: dict[str, dict[str, list[Emitted]]] = {}
_CAPTURED_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Emitted:
    """One element an output emitted, with its timestamp, window and pane."""

    value: Any
    timestamp: Timestamp
    window: Any
    timing: str
    index: int


@dataclasses.dataclass(frozen=True)
class Pane:
    """The values one pane of one window emitted (all keys that fired it with that index)."""

    window: Any
    timing: str
    index: int
    values: tuple[Any, ...]


class _CaptureFn(beam.DoFn):
    def __init__(self, run_id: str, output: str):
        self._run_id = run_id
        self._output = output

    def process(
        self,
        element,
        timestamp=beam.DoFn.TimestampParam,
        window=beam.DoFn.WindowParam,
        pane=beam.DoFn.PaneInfoParam,
    ):
        emitted = Emitted(element, timestamp, window, pane_timing(pane), int(pane.index))
        with _CAPTURED_LOCK:
            _CAPTURED.setdefault(self._run_id, {}).setdefault(self._output, []).append(emitted)


def _window_key(window: Any) -> tuple[int, int]:
    if isinstance(window, beam_window.IntervalWindow):
        return window.start.micros, window.end.micros
    return -(2**63), 2**63  # the global window sorts first


class HarnessResult:
    """What a transform emitted in one harness run, per output, with windows and panes.

    ``output`` arguments name an output (default: the main one); ``window`` arguments take an
    ``IntervalWindow`` or a window spec with ``at=<instant>``.
    """

    def __init__(
        self,
        outputs: Mapping[str, Sequence[Emitted]],
        *,
        main: str,
        accounting: Accounting,
        steps: tuple[str, ...],
        pipeline_result: Any,
    ):
        self.outputs: dict[str, tuple[Emitted, ...]] = {k: tuple(v) for k, v in outputs.items()}
        self.main = main
        self.accounting = accounting
        self.steps = steps
        self.pipeline_result = pipeline_result

    def _emitted(self, output: str | None) -> tuple[Emitted, ...]:
        name = self.main if output is None else output
        if name not in self.outputs:
            raise ValueError(
                f"output={name!r} is not an output of the transform; it has "
                f"{', '.join(map(repr, self.outputs))}"
            )
        return self.outputs[name]

    def values(
        self,
        output: str | None = None,
        *,
        window: Any = None,
        at: Any = None,
        timing: str | None = None,
    ) -> list[Any]:
        """The values of ``output``, optionally only those of one window and/or pane timing."""
        wanted = None if window is None else resolve_window(window, at)
        timing = _check_timing(timing)
        return [
            e.value
            for e in self._emitted(output)
            if (wanted is None or e.window == wanted) and (timing is None or e.timing == timing)
        ]

    def windows(self, output: str | None = None) -> list[Any]:
        """The windows ``output`` emitted anything in, by start."""
        return sorted({e.window for e in self._emitted(output)}, key=_window_key)

    def panes(self, output: str | None = None, *, timing: str | None = None) -> list[Pane]:
        """The panes of ``output`` (of one ``timing`` if given), by window, then pane index."""
        timing = _check_timing(timing)
        grouped: dict[tuple[Any, str, int], list[Any]] = {}
        for e in self._emitted(output):
            if timing is None or e.timing == timing:
                grouped.setdefault((e.window, e.timing, e.index), []).append(e.value)
        order = sorted(grouped, key=lambda k: (_window_key(k[0]), k[2], _TIMING_ORDER.get(k[1], 9)))
        return [Pane(w, t, i, tuple(grouped[(w, t, i)])) for w, t, i in order]

    def panes_for(self, window: Any, *, at: Any = None, output: str | None = None) -> list[Pane]:
        """The panes of one window, by pane index."""
        wanted = resolve_window(window, at)
        return [pane for pane in self.panes(output) if pane.window == wanted]

    @property
    def early_panes(self) -> list[Pane]:
        """The main output's early (speculative) panes."""
        return self.panes(timing="EARLY")

    @property
    def on_time_panes(self) -> list[Pane]:
        """The main output's on-time panes."""
        return self.panes(timing="ON_TIME")

    @property
    def late_panes(self) -> list[Pane]:
        """The main output's late panes (late records within the allowed lateness)."""
        return self.panes(timing="LATE")

    def _named(self, name: str) -> list[Any]:
        return [e.value for e in self.outputs.get(name, ())]

    @property
    def late(self) -> list[Any]:
        """The ``late`` output: records beyond the allowed lateness (dead-letter envelopes)."""
        return self._named("late")

    @property
    def dead_letters(self) -> list[Any]:
        """The ``dead_letter`` output."""
        return self._named("dead_letter")

    @property
    def duplicates(self) -> list[Any]:
        """The ``duplicate`` output."""
        return self._named("duplicate")

    def assert_accounting(self, **expected: int) -> Accounting:
        """Asserts the accounting identity and each given counter (see ``assert_accounting``)."""
        return assert_accounting(self.accounting, **expected)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}: {len(emitted)}" for name, emitted in self.outputs.items())
        return f"HarnessResult({sizes}; {self.accounting.to_dict()})"


def _check_timing(timing: str | None) -> str | None:
    if timing is None:
        return None
    normal = str(timing).upper().replace("-", "_")
    if normal not in TIMINGS:
        raise ValueError(f"timing={timing!r} is not one of {', '.join(TIMINGS)}")
    return normal


def _outputs_of(returned: Any) -> dict[str, beam.PCollection]:
    if isinstance(returned, beam.PCollection):
        return {"main": returned}
    if isinstance(returned, beam.pvalue.DoOutputsTuple):  # ParDo(...).with_outputs(...)
        named = {"main": returned[None]}
        named.update((pcoll.tag, pcoll) for pcoll in returned if pcoll.tag is not None)
    elif isinstance(returned, tuple) and hasattr(returned, "_asdict"):
        named = dict(returned._asdict())
    elif isinstance(returned, Mapping):
        named = dict(returned)
    else:
        raise ValueError(
            f"the transform returned {type(returned).__name__}; expected a PCollection, a "
            "NamedTuple of PCollections (e.g. Processed) or a dict name -> PCollection"
        )
    if not named:
        raise ValueError("the transform returned no outputs")
    for name, pcoll in named.items():
        if not isinstance(name, str) or not isinstance(pcoll, beam.PCollection):
            raise ValueError(
                f"output {name!r} of the transform is {type(pcoll).__name__}, not a "
                "PCollection (outputs are named by strings)"
            )
    return named


class StreamHarness:
    """Runs transforms over replayed events as a stream; options are checked here.

    Args:
      max_out_of_orderness: the watermark policy's bound (seconds, ``timedelta``, ``'5s'``);
        ``None`` moves the watermark only with control steps (and to the end at the end).
        Required: how late data is judged depends on it.
      event_time: record -> event time (``Timestamp``, epoch seconds or an aware datetime);
        ``None`` means events are ``(record, event_time)`` pairs. For a file it is required;
        with ``lines="bytes"`` it is applied to the decoded JSON object.
      watermark_every: records between two policy steps (1: the watermark moves with every
        record, the most deterministic; raise it for big files).
      advance_processing_time: processing time follows the policy's watermark advances.
      lines: how a file's lines are fed: ``"json"`` (decoded objects) or ``"bytes"``
        (``SourceRecord`` values with ``file``/``line`` origins).
      runner: ``"BundleBasedDirectRunner"`` or ``"PrismRunner"``.
      pipeline_args: extra pipeline flags (e.g. ``["--prism_location=/path/to/prism"]``).
    """

    def __init__(
        self,
        *,
        max_out_of_orderness: DurationLike | None,
        event_time: Callable[[Any], Any] | None = None,
        watermark_every: int = 1,
        advance_processing_time: bool = True,
        lines: str = "json",
        runner: str = "BundleBasedDirectRunner",
        pipeline_args: Sequence[str] = (),
    ):
        if max_out_of_orderness is not None:
            parse_duration(max_out_of_orderness, name="max_out_of_orderness")
        self._max_out_of_orderness = max_out_of_orderness
        if event_time is not None and not callable(event_time):
            raise ValueError(f"event_time={event_time!r} must be a callable record -> event time")
        self._event_time = event_time
        if (
            isinstance(watermark_every, bool)
            or not isinstance(watermark_every, int)
            or watermark_every < 1
        ):
            raise ValueError(f"watermark_every={watermark_every!r} must be a positive integer")
        self._watermark_every = watermark_every
        if not isinstance(advance_processing_time, bool):
            raise ValueError(f"advance_processing_time={advance_processing_time!r} is not a bool")
        self._advance_processing_time = advance_processing_time
        if lines not in LINES:
            raise ValueError(f"lines={lines!r} is not one of {', '.join(map(repr, LINES))}")
        self._lines = lines
        if runner not in RUNNERS:
            raise ValueError(
                f"runner={runner!r} is not one of {', '.join(map(repr, RUNNERS))} (the harness "
                "replays a TestStream and reads outputs in this process)"
            )
        self._runner = runner
        if isinstance(pipeline_args, str) or not all(isinstance(a, str) for a in pipeline_args):
            raise ValueError(f"pipeline_args={pipeline_args!r} must be a list of flag strings")
        self._args = self._pipeline_args(list(pipeline_args))

    def _pipeline_args(self, args: list[str]) -> list[str]:
        options = PipelineOptions(args)
        environment = options.view_as(PortableOptions).environment_type
        if environment and environment.upper() != "LOOPBACK":
            raise ValueError(
                f"--environment_type={environment} runs workers outside this process, where "
                "the harness cannot collect outputs; leave it unset (LOOPBACK)"
            )
        args = [*args, "--streaming"]
        if self._runner == "PrismRunner":
            location = options.get_all_options().get("prism_location")
            args.append(f"--prism_location={find_prism(location)}")
            args.append(f"--experiments={PRISM_NO_SPLIT}")  # see runners.PRISM_NO_SPLIT
        return args

    def run(self, transform: Any, events: Iterable[Any] | str | os.PathLike) -> HarnessResult:
        """Replays ``events`` through ``transform`` and returns what it emitted."""
        fix_direct_runner_metrics()  # Beam's streaming DirectRunner counts every bundle
        apply = _applier(transform)
        elements, event_time = self._elements(events)
        timeline = build_stream(
            elements,
            event_time=event_time,
            max_out_of_orderness=self._max_out_of_orderness,
            watermark_every=self._watermark_every,
            advance_processing_time=self._advance_processing_time,
        )
        run_id = uuid.uuid4().hex
        pipeline = beam.Pipeline(self._runner, options=PipelineOptions(self._args))
        records = pipeline | "Events" >> timeline.stream
        outputs = _outputs_of(apply(records))
        for name, pcoll in outputs.items():
            _ = pcoll | f"Capture[{name}]" >> beam.ParDo(_CaptureFn(run_id, name))
        try:
            result = pipeline.run()
            result.wait_until_finish()
            with _CAPTURED_LOCK:
                captured = dict(_CAPTURED.get(run_id, {}))
        finally:
            with _CAPTURED_LOCK:
                _CAPTURED.pop(run_id, None)
        main = "main" if "main" in outputs else next(iter(outputs))
        return HarnessResult(
            {name: captured.get(name, []) for name in outputs},
            main=main,
            accounting=Accounting.from_result(result),
            steps=timeline.steps,
            pipeline_result=result,
        )

    def _elements(self, events: Any) -> tuple[Iterable[Any], Callable[[Any], Any] | None]:
        if not isinstance(events, (str, os.PathLike)):
            if isinstance(events, (bytes, Mapping)) or not isinstance(events, Iterable):
                raise ValueError(
                    f"events={events!r:.80} is not a list of events or a path to a JSON-lines file"
                )
            return events, self._event_time
        path = Path(events)
        if not path.is_file():
            raise ValueError(f"events={str(events)!r} is not a file")
        if self._event_time is None:
            raise ValueError(
                f"events={str(events)!r} is a file: give event_time=<record -> event time> "
                "(e.g. EventTimeExtractor(field='ts', unit='ms'))"
            )
        if self._lines == "bytes":
            return read_lines(path), RecordEventTime(JsonFormat(), self._event_time)
        return _json_lines(path), self._event_time


def _json_lines(path: Path) -> Iterable[Any]:
    for record in read_lines(path):
        try:
            yield json.loads(record.payload)
        except ValueError as exc:
            raise ValueError(
                f"{path}:{record.origin['line']} is not JSON ({exc}); use lines='bytes' to feed "
                "raw lines to a transform that dead-letters them"
            ) from None


def _applier(transform: Any) -> Callable[[beam.PCollection], Any]:
    if isinstance(transform, beam.PTransform):
        return lambda pcoll: pcoll | "Transform" >> transform
    if callable(transform):
        return transform
    raise ValueError(
        f"transform={transform!r:.80} is neither a PTransform nor a function pcoll -> outputs"
    )


def run_transform(
    transform: Any, events: Iterable[Any] | str | os.PathLike, **options: Any
) -> HarnessResult:
    """``StreamHarness(**options).run(transform, events)`` in one call."""
    return StreamHarness(**options).run(transform, events)
