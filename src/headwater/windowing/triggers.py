"""Trigger presets: when a window emits panes, and whether panes accumulate.

Input: a windowed ``PCollection`` about to be grouped (``GroupByKey``, ``CombinePerKey``).
Output: panes per key and window, in this order:

* **early** panes (optional, ``early:10s``): speculative results every N seconds of processing
  time while the window is open -- N seconds after the first element of each new pane;
* one **on-time** pane when the watermark passes the end of the window (always);
* **late** panes (``late``): one per late element that arrives after the on-time pane but within
  the allowed lateness.

Panes are *discarding* by default (each pane carries only the elements since the previous pane);
``accumulating`` makes every pane carry everything seen so far in the window.

Late data and safety: with ``AfterWatermark()`` and no late trigger, Beam closes the window at the
on-time pane and drops every later element -- even one inside the allowed lateness -- and Beam's
``GroupByKey`` refuses such a trigger at construction ("Unsafe trigger ... may lose data") unless
``--allow_unsafe_triggers`` is set. headwater never drops silently, so :func:`window_into` and
:meth:`TriggerSpec.with_lateness` turn late firings on whenever ``allowed_lateness > 0``: a late
element inside the allowed lateness always produces a late pane. Elements later than the allowed
lateness are dropped by the runner's ``GroupByKey``; route them to a ``late`` output *before*
grouping (see ``headwater.windowing``'s late-data routing).

Spec syntax (the CLI's ``--trigger``), comma-separated, in any order::

    on_time                 on-time pane only (the default)
    early:10s               early panes every 10 s of processing time, then the on-time pane
    late                    a late pane for every late element within the allowed lateness
    accumulating            panes accumulate (``discarding``, the default, may be written too)

e.g. ``early:10s,late,accumulating``. ``str(spec)`` is the canonical form and parses back to an
equal spec.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
from apache_beam.transforms import trigger as beam_trigger
from apache_beam.transforms.window import WindowFn

from headwater.windowing.durations import (
    DurationLike,
    format_duration,
    parse_duration,
    to_beam_duration,
)
from headwater.windowing.windows import WindowSpec, parse_window_spec

__all__ = [
    "TriggerSpec",
    "parse_trigger_spec",
    "window_into",
]

_ACCEPTED_FORMS = (
    "comma-separated 'on_time', 'early:<duration>' (e.g. early:10s), 'late', "
    "'accumulating' or 'discarding', e.g. 'on_time', 'early:10s,late', 'late,accumulating'"
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TriggerSpec:
    """A trigger preset: optional early panes, the on-time pane, optional late panes.

    Args:
      early_every: emit an early pane this long (processing time) after the first element of each
        pane while the window is open; whole seconds (Beam's ``AfterProcessingTime`` has second
        resolution), ``None`` for no early panes.
      late_firings: emit a late pane for every element that arrives after the on-time pane within
        the allowed lateness.
      accumulating: panes carry everything seen so far in the window instead of only what is new.

    >>> spec = TriggerSpec(early_every="10s", late_firings=True)
    >>> spec.trigger()
    AfterWatermark(early=AfterProcessingTime(delay=10), late=AfterCount(1))
    >>> str(spec), spec.accumulation_mode() == beam_trigger.AccumulationMode.DISCARDING
    ('early:10s,late', True)
    """

    early_every: float | None = None
    late_firings: bool = False
    accumulating: bool = False

    def __post_init__(self) -> None:
        if self.early_every is not None:
            seconds = parse_duration(self.early_every, name="early_every", allow_zero=False)
            if seconds != int(seconds):
                raise ValueError(
                    f"early_every={self.early_every!r} is not a whole number of seconds; "
                    "Beam's processing-time triggers have second resolution"
                )
            object.__setattr__(self, "early_every", float(seconds))
        for name in ("late_firings", "accumulating"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name}={value!r} must be True or False")

    @classmethod
    def for_lateness(
        cls,
        allowed_lateness: DurationLike,
        *,
        early_every: DurationLike | None = None,
        accumulating: bool = False,
    ) -> TriggerSpec:
        """The preset for a window with ``allowed_lateness``: late firings on iff it is > 0.

        >>> str(TriggerSpec.for_lateness("5m", early_every=30))
        'early:30s,late'
        >>> str(TriggerSpec.for_lateness(0))
        'on_time'
        """
        lateness = parse_duration(allowed_lateness, name="allowed_lateness")
        return cls(
            early_every=early_every,  # type: ignore[arg-type]
            late_firings=lateness > 0,
            accumulating=accumulating,
        )

    def with_lateness(self, allowed_lateness: DurationLike) -> TriggerSpec:
        """This preset, with late firings turned on if ``allowed_lateness > 0`` (never off).

        >>> str(TriggerSpec().with_lateness("1m")), str(TriggerSpec().with_lateness(0))
        ('late', 'on_time')
        """
        lateness = parse_duration(allowed_lateness, name="allowed_lateness")
        if lateness > 0 and not self.late_firings:
            return dataclasses.replace(self, late_firings=True)
        return self

    def trigger(self) -> beam_trigger.AfterWatermark:
        """The Beam trigger: ``AfterWatermark(early=AfterProcessingTime(N), late=AfterCount(1))``.

        ``AfterWatermark`` repeats its early and late triggers itself (wraps them in
        ``Repeatedly``), so early panes recur every N seconds and late panes per late element.
        """
        early = (
            beam_trigger.AfterProcessingTime(int(self.early_every))
            if self.early_every is not None
            else None
        )
        late = beam_trigger.AfterCount(1) if self.late_firings else None
        return beam_trigger.AfterWatermark(early=early, late=late)

    def accumulation_mode(self) -> int:
        """``AccumulationMode.ACCUMULATING`` or ``AccumulationMode.DISCARDING``."""
        if self.accumulating:
            return beam_trigger.AccumulationMode.ACCUMULATING
        return beam_trigger.AccumulationMode.DISCARDING

    def __str__(self) -> str:
        parts = []
        if self.early_every is not None:
            parts.append(f"early:{format_duration(self.early_every)}")
        if self.late_firings:
            parts.append("late")
        if not parts:
            parts.append("on_time")
        if self.accumulating:
            parts.append("accumulating")
        return ",".join(parts)


def parse_trigger_spec(spec: str) -> TriggerSpec:
    """Parses a ``--trigger`` spec (see the module docstring); ``ValueError`` quotes a bad one.

    >>> parse_trigger_spec("early:10s,late,accumulating")
    TriggerSpec(early_every=10.0, late_firings=True, accumulating=True)
    """
    if not isinstance(spec, str):
        raise ValueError(f"trigger spec {spec!r} is not a string; accepted: {_ACCEPTED_FORMS}")
    seen: set[str] = set()
    early_every: str | None = None
    late_firings = False
    accumulating: bool | None = None
    try:
        tokens = [token.strip() for token in spec.split(",")]
        if not any(tokens):
            raise ValueError("it is empty")
        for token in tokens:
            name, sep, argument = token.partition(":")
            name = name.strip().lower()
            if name in seen:
                raise ValueError(f"{name!r} is given twice")
            seen.add(name)
            if name == "early" and sep:
                early_every = argument.strip()
            elif sep:
                raise ValueError(f"{token!r} takes no argument")
            elif name == "on_time":
                pass
            elif name == "late":
                late_firings = True
            elif name in ("accumulating", "discarding"):
                if accumulating is not None:
                    raise ValueError("give 'accumulating' or 'discarding', not both")
                accumulating = name == "accumulating"
            else:
                raise ValueError(f"unknown part {token!r}")
        if "on_time" in seen and early_every is not None:
            raise ValueError("'on_time' means no early panes; drop it or the 'early' part")
        return TriggerSpec(
            early_every=early_every,  # type: ignore[arg-type]
            late_firings=late_firings,
            accumulating=bool(accumulating),
        )
    except ValueError as error:
        raise ValueError(
            f"trigger spec {spec!r} is not valid: {error}; accepted: {_ACCEPTED_FORMS}"
        ) from error


def window_into(
    window: WindowSpec | WindowFn | str,
    *,
    trigger: TriggerSpec | str | None = None,
    allowed_lateness: DurationLike = 0,
) -> beam.WindowInto:
    """``beam.WindowInto`` with a headwater window and trigger preset, safe for late data.

    Late firings are turned on whenever ``allowed_lateness > 0`` (see the module docstring), so
    no element inside the allowed lateness is dropped.

    >>> w = window_into("fixed:1m", trigger="early:10s", allowed_lateness="5m")
    >>> w.windowing.triggerfn, w.windowing.allowed_lateness
    (AfterWatermark(early=AfterProcessingTime(delay=10), late=AfterCount(1)), Duration(300))
    """
    if isinstance(window, str):
        window_fn: WindowFn = parse_window_spec(window).window_fn()
    elif isinstance(window, WindowFn):
        window_fn = window
    elif hasattr(window, "window_fn"):
        window_fn = window.window_fn()
    else:
        raise ValueError(f"window={window!r} is not a window spec, a spec string or a WindowFn")
    if trigger is None:
        spec = TriggerSpec()
    elif isinstance(trigger, str):
        spec = parse_trigger_spec(trigger)
    elif isinstance(trigger, TriggerSpec):
        spec = trigger
    else:
        raise ValueError(f"trigger={trigger!r} is not a TriggerSpec or a trigger spec string")
    lateness = parse_duration(allowed_lateness, name="allowed_lateness")
    spec = spec.with_lateness(lateness)
    return beam.WindowInto(
        window_fn,
        trigger=spec.trigger(),
        accumulation_mode=spec.accumulation_mode(),
        allowed_lateness=to_beam_duration(lateness),
    )
