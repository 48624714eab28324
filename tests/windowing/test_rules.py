"""The rules module: scalar and vector forms agree, and Beam's WindowFns follow the same rule."""

from __future__ import annotations

import numpy as np
import pytest
from apache_beam.transforms import window as beam_window
from apache_beam.utils.timestamp import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.windowing import rules
from headwater.windowing.windows import CalendarWindows

# 1990 .. 2040, where DST rules of the zones below change several times
INSTANTS = st.integers(min_value=631_152_000_000_000, max_value=2_208_988_800_000_000)
HORIZONS = st.integers(min_value=0, max_value=3 * 86_400_000_000)
ZONES = st.sampled_from(
    ["UTC", "Europe/Berlin", "America/New_York", "America/Havana", "Australia/Lord_Howe"]
)
UNITS = st.sampled_from(rules.CALENDAR_UNITS)


def _beam_windows(fn: beam_window.WindowFn, ts: int) -> set[tuple[int, int]]:
    windows = fn.assign(beam_window.WindowFn.AssignContext(Timestamp(micros=ts)))
    return {(w.start.micros, w.end.micros) for w in windows}


def _assert_one_window_per_instant(fn: beam_window.WindowFn, ts: list[int]) -> None:
    assign = rules.assigner(fn)
    starts, ends, rows = assign.windows_v(np.array(ts, dtype=np.int64))
    assert rows.tolist() == list(range(len(ts)))
    for i, t in enumerate(ts):
        assert assign.windows(t) == [(starts[i], ends[i])]
        assert set(assign.windows(t)) == _beam_windows(fn, t)
        assert starts[i] <= t < ends[i]


@settings(max_examples=200, deadline=None)
@given(ts=st.lists(INSTANTS, min_size=1, max_size=50), horizon=HORIZONS, data=st.data())
def test_dedup_vector_form_matches_scalar_form(ts, horizon, data):
    """is_duplicate, dedup_expiry and is_forgotten agree per element and as arrays."""
    anchors = [data.draw(st.one_of(st.none(), INSTANTS)) for _ in ts]
    watermark = data.draw(INSTANTS)
    ts_v = np.array(ts, dtype=np.int64)
    anchors_v = np.array([rules.NO_TIME if a is None else a for a in anchors], dtype=np.int64)
    duplicate = rules.is_duplicate_v(ts_v, anchors_v, horizon)
    forgotten = rules.is_forgotten_v(anchors_v, horizon, watermark)
    expiry = rules.dedup_expiry_v(anchors_v, horizon)
    for i, (t, a) in enumerate(zip(ts, anchors, strict=True)):
        assert duplicate[i] == rules.is_duplicate(t, a, horizon)
        if a is None:
            assert not forgotten[i]
            assert expiry[i] == rules.NO_TIME
        else:
            assert forgotten[i] == rules.is_forgotten(a, horizon, watermark)
            assert expiry[i] == rules.dedup_expiry(a, horizon)


@given(anchor=INSTANTS, horizon=HORIZONS)
def test_dedup_expiry_is_the_horizon_rounded_up_to_a_millisecond(anchor, horizon):
    """The expiry timer never fires before anchor + horizon and at most 1 ms after it."""
    expiry = rules.dedup_expiry(anchor, horizon)
    assert expiry % 1000 == 0
    assert anchor + horizon <= expiry < anchor + horizon + 1000


def test_timer_limit_is_beams_end_of_the_global_window():
    """The expiry clamp is the last millisecond a Beam timer can be set at."""
    limit = beam_window.GlobalWindow().max_timestamp().micros // 1000 * 1000
    assert limit == rules.MAX_TIMER_MICROS
    assert rules.dedup_expiry(limit, 10**12) == limit


@settings(max_examples=200, deadline=None)
@given(
    ts=st.lists(INSTANTS, min_size=1, max_size=40),
    size_s=st.integers(min_value=1, max_value=7200),
    offset_s=st.integers(min_value=0, max_value=7199),
)
def test_fixed_windows_scalar_vector_and_beam_agree(ts, size_s, offset_s):
    """Fixed windows: the scalar rule, the vector rule and Beam's FixedWindows are one rule."""
    _assert_one_window_per_instant(beam_window.FixedWindows(size_s, offset_s % size_s), ts)


@settings(max_examples=200, deadline=None)
@given(
    ts=st.lists(INSTANTS, min_size=1, max_size=30),
    period_s=st.integers(min_value=1, max_value=3600),
    copies=st.integers(min_value=1, max_value=6),
    extra_s=st.integers(min_value=0, max_value=3599),
)
def test_sliding_windows_scalar_vector_and_beam_agree(ts, period_s, copies, extra_s):
    """Sliding windows: every window of an instant, in the same order, on every form."""
    size_s = period_s * copies + min(extra_s, period_s - 1)
    fn = beam_window.SlidingWindows(size_s, period_s)
    assign = rules.assigner(fn)
    starts, ends, rows = assign.windows_v(np.array(ts, dtype=np.int64))
    for i, t in enumerate(ts):
        mine = [(int(s), int(e)) for s, e, r in zip(starts, ends, rows, strict=True) if r == i]
        assert mine == assign.windows(t)
        assert set(mine) == _beam_windows(fn, t)
        assert all(s <= t < e for s, e in mine)


@settings(max_examples=150, deadline=None)
@given(ts=st.lists(INSTANTS, min_size=1, max_size=30), unit=UNITS, zone=ZONES)
def test_calendar_windows_scalar_vector_and_windowfn_agree(ts, unit, zone):
    """Calendar windows: vector rule == scalar rule == CalendarWindows, DST included."""
    _assert_one_window_per_instant(CalendarWindows(unit, zone), ts)


@pytest.mark.parametrize(
    ("zone", "day_start", "hours"),
    [
        ("Europe/Berlin", "2024-03-30T23:00:00Z", 23),  # spring forward
        ("Europe/Berlin", "2024-10-26T22:00:00Z", 25),  # fall back
        ("America/Havana", "2024-03-10T05:00:00Z", 23),  # midnight does not exist
    ],
)
def test_calendar_day_length_on_dst_days_is_the_same_on_both_forms(zone, day_start, hours):
    """Around a DST change every instant of the local day maps to the one 23 h / 25 h window."""
    start = Timestamp.from_rfc3339(day_start).micros
    instants = start + np.arange(0, hours * 3_600_000_000, 600_000_000, dtype=np.int64)
    assign = rules.assigner(CalendarWindows("day", zone))
    starts, ends, _ = assign.windows_v(instants)
    assert set(starts.tolist()) == {start}
    assert set(ends.tolist()) == {start + hours * 3_600_000_000}
    assert assign.windows(int(instants[-1])) == [(start, start + hours * 3_600_000_000)]


@settings(max_examples=150, deadline=None)
@given(
    ts=st.lists(INSTANTS, min_size=1, max_size=30),
    watermark=INSTANTS,
    lateness_s=st.integers(min_value=0, max_value=3600),
    period_s=st.integers(min_value=1, max_value=600),
    copies=st.integers(min_value=1, max_value=4),
)
def test_lateness_vector_form_matches_scalar_form(ts, watermark, lateness_s, period_s, copies):
    """Late iff the last of its windows has closed; both forms give the same lateness."""
    assign = rules.assigner(beam_window.SlidingWindows(period_s * copies, period_s))
    ts_v = np.array(ts, dtype=np.int64)
    lateness = lateness_s * 1_000_000
    close, starts, ends = rules.closes_v(assign, ts_v, lateness)
    late = rules.is_late_v(close, watermark)
    behind = rules.lateness_ms_v(watermark, ts_v)
    for i, t in enumerate(ts):
        scalar_close, start, end = rules.latest_close(assign.windows(t), lateness)
        assert (int(close[i]), int(starts[i]), int(ends[i])) == (scalar_close, start, end)
        assert late[i] == rules.is_late(scalar_close, watermark)
        assert late[i] == all(
            rules.is_late(rules.window_close(e, lateness), watermark) for _, e in assign.windows(t)
        )
        assert behind[i] == rules.lateness_ms(watermark, t)


def test_sessions_have_no_per_instant_rule():
    """Session windows merge per key: the assigner refuses them with a message naming them."""
    with pytest.raises(ValueError, match="sessions merge per key"):
        rules.assigner(beam_window.Sessions(60))


class _MergeContext(beam_window.WindowFn.MergeContext):
    """Beam's merge callbacks, applied to a set of windows (the GroupByKey's bookkeeping)."""

    def __init__(self, windows):
        super().__init__(windows)
        self.result = set(windows)

    def merge(self, to_be_merged, merge_result):
        self.result -= set(to_be_merged)
        self.result.add(merge_result)


def _beam_sessions(gap: int, ts: list[int]) -> list[tuple[int, int]]:
    fn = beam_window.Sessions(Timestamp(micros=gap) - Timestamp(micros=0))
    windows = [
        w for t in ts for w in fn.assign(beam_window.WindowFn.AssignContext(Timestamp(micros=t)))
    ]
    context = _MergeContext(windows)
    fn.merge(context)
    return sorted((w.start.micros, w.end.micros) for w in context.result)


# gaps and instants on a small grid so that windows often touch (end == next start) exactly
GRID = st.integers(min_value=0, max_value=400).map(lambda k: k * 250_000)
GAPS = st.integers(min_value=1, max_value=8).map(lambda k: k * 250_000)


@settings(max_examples=300, deadline=None)
@given(per_key=st.lists(st.lists(GRID, max_size=30), min_size=1, max_size=5), gap=GAPS)
def test_sessions_scalar_vector_and_beam_agree(per_key, gap):
    """merge_sessions (one key), merge_sessions_v (many keys at once) and Beam's Sessions merge
    give the same sessions, touching windows kept apart."""
    groups, starts = [], []
    for key, ts in enumerate(per_key):
        expected = _beam_sessions(gap, ts)
        assert rules.merge_sessions([rules.session_window(t, gap) for t in ts]) == expected
        groups += [key] * len(ts)
        starts += ts
    groups_v, starts_v = np.array(groups, dtype=np.int64), np.array(starts, dtype=np.int64)
    order = np.lexsort((starts_v, groups_v))
    session, first, last = rules.merge_sessions_v(
        groups_v[order], starts_v[order], starts_v[order] + gap
    )
    for key, ts in enumerate(per_key):
        rows = np.flatnonzero(groups_v[order] == key)
        got = sorted({(int(first[s]), int(last[s])) for s in session[rows]})
        assert got == _beam_sessions(gap, ts)
        for row in rows:  # each record lies in its session
            assert first[session[row]] <= starts_v[order][row] < last[session[row]]


@settings(max_examples=200, deadline=None)
@given(
    groups=st.lists(st.integers(min_value=0, max_value=6), max_size=40),
    data=st.data(),
    wide=st.booleans(),
)
def test_running_max_per_group(groups, data, wide):
    """running_max_v equals a plain loop, for narrow and for very wide value ranges (ranks)."""
    groups = sorted(groups)
    top = 2**62 if wide else 1_000
    values = [data.draw(st.integers(min_value=-top, max_value=top)) for _ in groups]
    got = rules.running_max_v(np.array(groups, dtype=np.int64), np.array(values, dtype=np.int64))
    expected, best = [], {}
    for g, v in zip(groups, values, strict=True):
        best[g] = max(best.get(g, v), v)
        expected.append(best[g])
    assert got.tolist() == expected
