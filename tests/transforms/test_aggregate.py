"""Tests for headwater.transforms.aggregate: metric specs, record checks and windowed rows."""

from __future__ import annotations

import datetime as dt
import math
import random
import re
from collections import defaultdict
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import (
    BeamAssertException,
    assert_that,
    equal_to,
    equal_to_per_window,
)
from apache_beam.transforms import trigger
from apache_beam.transforms.window import FixedWindows, IntervalWindow, TimestampedValue
from hypothesis import given
from hypothesis import strategies as st

from headwater.transforms.aggregate import (
    AggregateMetrics,
    MetricSpec,
    _CombineMetricsFn,
    check_record,
    parse_metrics,
)
from headwater.transforms.deadletter import ApplyOrDeadLetter

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
BASE_S = 1_700_000_040  # a minute boundary, so windows start at BASE_S + 60 * n
ALL_METRICS = (
    "count,sum:amount,min:amount,max:amount,mean:amount,"
    "sum:stats.latency_ms,min:stats.latency_ms,max:stats.latency_ms,mean:stats.latency_ms"
)


def _batch() -> TestPipeline:
    return TestPipeline(runner="FnApiRunner")


def _windowed(p: beam.Pipeline, timed_records: list[tuple[float, Any]], label: str = "Records"):
    return (
        p
        | f"Create{label}" >> beam.Create(timed_records)
        | f"Stamp{label}" >> beam.MapTuple(lambda ts, record: TimestampedValue(record, ts))
        | f"Window{label}" >> beam.WindowInto(FixedWindows(60))
    )


def _at(seconds: float) -> dt.datetime:
    return EPOCH + dt.timedelta(seconds=seconds)


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(expected, float):
        return type(actual) is float and math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-9)
    return type(actual) is type(expected) and actual == expected


def _rows_match(expected: dict[tuple[Any, dt.datetime], dict[str, Any]]):
    """A matcher: one row per (key, window_start), each column equal (floats within 1e-9)."""

    def _match(actual: list[dict[str, Any]]) -> None:
        by_id = {(row["key"], row["window_start"]): row for row in actual}
        if len(by_id) != len(actual):
            raise BeamAssertException(f"{len(actual) - len(by_id)} duplicate (key, window) rows")
        if set(by_id) != set(expected):
            missing = sorted(map(str, set(expected) - set(by_id)))[:5]
            extra = sorted(map(str, set(by_id) - set(expected)))[:5]
            raise BeamAssertException(f"rows differ: missing {missing}, unexpected {extra}")
        for ident, want in expected.items():
            got = by_id[ident]
            if set(got) != set(want):
                raise BeamAssertException(f"{ident}: columns {sorted(got)} != {sorted(want)}")
            for column, value in want.items():
                if not _same(got[column], value):
                    raise BeamAssertException(f"{ident} {column}: {got[column]!r} != {value!r}")

    return _match


def _expected_rows(timed_records, key_field: str, fields: dict[str, tuple[str, ...]]):
    """Plain-Python metrics per (key, 60 s window); ``fields`` maps a column suffix to a path."""
    groups: dict[tuple[Any, int], list[dict[str, Any]]] = defaultdict(list)
    for ts, record in timed_records:
        groups[(str(record[key_field]), int(ts // 60) * 60)].append(record)  # keys are text
    expected = {}
    for (key, start), records in groups.items():
        row: dict[str, Any] = {
            "window_start": _at(start),
            "window_end": _at(start + 60),
            "key": key,
            "count": len(records),
        }
        for suffix, path in fields.items():
            values = []
            for record in records:
                value = record
                for name in path:
                    value = value[name]
                values.append(value)
            row[f"sum_{suffix}"] = float(sum(values))
            row[f"min_{suffix}"] = float(min(values))
            row[f"max_{suffix}"] = float(max(values))
            row[f"mean_{suffix}"] = sum(values) / len(values)
        expected[(key, _at(start))] = row
    return expected


def _generated_records(n: int, seed: int) -> list[tuple[float, dict[str, Any]]]:
    rng = random.Random(seed)
    keys = ["alice", "bob", "carol", "7", 7, 42]
    records = []
    for _ in range(n):
        ts = BASE_S + rng.uniform(0, 600)
        amount = rng.randint(-50, 500) if rng.random() < 0.5 else round(rng.uniform(0, 100), 2)
        records.append(
            (
                ts,
                {
                    "user": rng.choice(keys),
                    "amount": amount,
                    "stats": {"latency_ms": rng.uniform(1, 900)},
                },
            )
        )
    return records


# --- metric specs ---------------------------------------------------------------------------


def test_parse_metrics_reads_every_kind_and_names_columns():
    """Every kind parses, and dotted fields become underscored column names."""
    specs = parse_metrics("count, sum:amount,min:a.b,max:latency_ms,mean:x")
    assert [s.column for s in specs] == [
        "count",
        "sum_amount",
        "min_a_b",
        "max_latency_ms",
        "mean_x",
    ]
    assert specs[2] == MetricSpec("min", "a.b")


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["sum", "min", "max", "mean"]),
            st.lists(
                st.from_regex(r"[a-z][a-z0-9_\-]{0,6}", fullmatch=True), min_size=1, max_size=3
            ),
        ),
        min_size=1,
        max_size=4,
        unique_by=lambda t: t[0] + "_" + "_".join(t[1]),
    ),
    st.booleans(),
)
def test_metric_spec_str_round_trips(parts, with_count):
    """``str`` of each parsed spec, joined with commas, parses back to the same specs."""
    text = ",".join(
        (["count"] if with_count else []) + [f"{kind}:{'.'.join(path)}" for kind, path in parts]
    )
    specs = parse_metrics(text)  # unique_by keeps the columns distinct
    assert ",".join(map(str, specs)) == text
    assert parse_metrics(",".join(map(str, specs))) == specs


@pytest.mark.parametrize(
    ("spec", "bad"),
    [
        ("count,avg:x", "avg:x"),
        ("count:x", "count:x"),
        ("count,sum", "'sum'"),
        ("sum:", "sum:"),
        ("max:a..b", "a..b"),
        ("mean:a b", "a b"),
        ("", "''"),
        ("   ", "'   '"),
        ("count,,sum:x", "part 2"),
        ("count,sum:x,count", "'count'"),
        ("sum:a.b,sum:a_b", "sum:a_b"),
        ("Count", "Count"),
    ],
)
def test_parse_metrics_error_names_the_bad_part(spec, bad):
    """A bad spec raises ValueError naming the offending part."""
    with pytest.raises(ValueError, match=re.escape(bad)):
        parse_metrics(spec)


def test_metric_spec_rejects_field_on_count_and_missing_field():
    """Direct construction is validated like parsing."""
    with pytest.raises(ValueError, match=re.escape("'count:x'")):
        MetricSpec("count", "x")
    with pytest.raises(ValueError, match=re.escape("'sum'")):
        MetricSpec("sum")
    with pytest.raises(ValueError, match=re.escape("'median'")):
        MetricSpec("median", "x")


# --- record checks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"amount": 1}, "key field 'user' is missing"),
        ({"user": "", "amount": 1}, "key field 'user' is empty"),
        ({"user": "  ", "amount": 1}, "key field 'user'='  ' is blank"),
        ({"user": None, "amount": 1}, "key field 'user' is None"),
        ({"user": float("nan"), "amount": 1}, "key field 'user'=nan is not a finite number"),
        ({"user": [1], "amount": 1}, "key field 'user'=[1] is a list"),
        ({"user": True, "amount": 1}, "key field 'user'=True is a bool"),
        ({"user": "a\ud800", "amount": 1}, "key field 'user'='a\\ud800' holds a lone surrogate"),
        ({"user": "a"}, "field 'amount' is missing (needed by sum:amount, max:amount)"),
        ({"user": "a", "amount": "3"}, "field 'amount'='3' is not numeric"),
        ({"user": "a", "amount": None}, "field 'amount'=None is not numeric"),
        ({"user": "a", "amount": True}, "field 'amount'=True is not numeric"),
        ({"user": "a", "amount": float("nan")}, "field 'amount'=nan is not a finite number"),
        ({"user": "a", "amount": float("inf")}, "field 'amount'=inf is not a finite number"),
        ({"user": "a", "amount": -float("inf")}, "field 'amount'=-inf is not a finite number"),
        ({"user": "a", "amount": -(10**400)}, "... is not a finite number"),  # past any float
        ({"user": "a", "amount": [1]}, "field 'amount'=[1] is not numeric"),
        ({"user": "a", "amount": 1}, "field 'stats.latency_ms' is missing"),
        ({"user": "a", "amount": 1, "stats": 3}, "field 'stats.latency_ms' is missing"),
        (
            {"user": "a", "amount": 1, "stats": {"latency_ms": "9"}},
            "field 'stats.latency_ms'='9' is not numeric",
        ),
        (b'{"user": "a"}', "record is a bytes, not a dict"),
    ],
)
def test_check_message_names_the_field_and_value(record, message):
    """Both check_record and AggregateMetrics.check name the field and its value."""
    metrics = "count,sum:amount,max:amount,mean:stats.latency_ms"
    with pytest.raises(ValueError, match=re.escape(message)):
        check_record(record, "user", metrics)
    with pytest.raises(ValueError, match=re.escape(message)):
        AggregateMetrics(key_field="user", metrics=metrics).check(record)


def test_check_returns_valid_records_unchanged():
    """A valid record passes through check unchanged, int and str keys alike."""
    for record in ({"user": "a", "n": 1}, {"user": 0, "n": 2.5}, {"user": {"id": 3}, "n": -1}):
        key_field = "user.id" if isinstance(record["user"], dict) else "user"
        assert check_record(record, key_field, ["count", "sum:n"]) is record
        assert AggregateMetrics(key_field=key_field, metrics="sum:n").check(record) is record


def test_check_record_rejects_bad_arguments():
    """check_record validates its key_field and metrics like the transform does."""
    with pytest.raises(ValueError, match=re.escape("key_field='a..b'")):
        check_record({"a": 1}, "a..b", "count")
    with pytest.raises(ValueError, match=re.escape("key_field=['a']")):
        check_record({"a": 1}, ["a"], "count")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("metrics=3")):
        check_record({"a": 1}, "a", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("metric {'sum': 'x'}")):
        check_record({"a": 1}, "a", [{"sum": "x"}])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("options", "bad"),
    [
        ({"key_field": "", "metrics": "count"}, "key_field=''"),
        ({"key_field": None, "metrics": "count"}, "key_field=None"),
        ({"key_field": "user.", "metrics": "count"}, "key_field='user.'"),
        ({"key_field": "user", "metrics": "sum"}, "'sum'"),
        ({"key_field": "user", "metrics": []}, "metrics=[]"),
        ({"key_field": "user", "metrics": 3}, "metrics=3"),
        ({"key_field": "user", "metrics": "count", "with_pane_info": "yes"}, "'yes'"),
    ],
)
def test_constructor_error_names_the_bad_option(options, bad):
    """Invalid options raise ValueError naming the bad value."""
    with pytest.raises(ValueError, match=re.escape(bad)):
        AggregateMetrics(**options)


def test_columns_list_row_layout():
    """``columns`` lists the window, key, metric and (optionally) pane columns in order."""
    plain = AggregateMetrics(key_field="u", metrics="count,mean:a.b")
    assert plain.columns == ("window_start", "window_end", "key", "count", "mean_a_b")
    with_pane = AggregateMetrics(key_field="u", metrics="count", with_pane_info=True)
    assert with_pane.columns[-3:] == ("pane_timing", "pane_index", "is_last_pane")
    assert plain.key_field == "u"
    assert plain.metrics == parse_metrics("count,mean:a.b")


# --- the combine fn ---------------------------------------------------------------------------


def test_combine_fn_empty_aggregate_gives_none_and_merges_exactly():
    """An empty accumulator yields count 0, sum 0.0 and None; merging keeps min/max/int sums."""
    specs = parse_metrics("count,sum:x,min:x,max:x,mean:x")
    fn = _CombineMetricsFn(specs, ("x",))
    empty = fn.extract_output(fn.create_accumulator())
    assert empty == {"count": 0, "sum_x": 0.0, "min_x": None, "max_x": None, "mean_x": None}
    left = fn.add_input(fn.add_input(fn.create_accumulator(), (2**53,)), (5,))
    right = fn.add_input(fn.add_input(fn.create_accumulator(), (1,)), (-3,))
    merged = fn.merge_accumulators([fn.create_accumulator(), left, fn.create_accumulator(), right])
    row = fn.extract_output(merged)
    assert row == {
        "count": 4,
        "sum_x": float(2**53 + 3),
        "min_x": -3.0,
        "max_x": float(2**53),
        "mean_x": (2**53 + 3) / 4,
    }


# --- batch pipelines ----------------------------------------------------------------------------


def test_rows_match_plain_python_over_generated_records():
    """Every metric kind, per key and 60 s window, equals a plain-Python computation."""
    records = _generated_records(3000, seed=20240611)
    expected = _expected_rows(
        records, "user", {"amount": ("amount",), "stats_latency_ms": ("stats", "latency_ms")}
    )
    assert len(expected) >= 50  # five keys (7 and "7" are one) over ten windows
    with _batch() as p:
        routed = _windowed(p, records) | AggregateMetrics(key_field="user", metrics=ALL_METRICS)
        assert_that(routed.main, _rows_match(expected), label="RowsMatchPython")
        assert_that(routed.dead_letter, equal_to([]), label="NoDeadLetters")


def test_keys_are_text_spelt_as_ids_are():
    """``"7"``, ``7`` and ``7.0`` are one key ``"7"``; ``7.5`` is ``"7.5"``: every key is a str."""
    records = [
        (BASE_S, {"k": "7", "v": 1}),
        (BASE_S + 1, {"k": 7, "v": 2}),
        (BASE_S + 2, {"k": 7.0}),
        (BASE_S + 3, {"k": 7.5}),
    ]
    with _batch() as p:
        routed = _windowed(p, records) | AggregateMetrics(key_field="k", metrics="count")
        keys = routed.main | beam.Map(lambda row: (row["key"], type(row["key"]), row["count"]))
        assert_that(keys, equal_to([("7", str, 3), ("7.5", str, 1)]), label="KeysAsText")


def test_int_and_float_fields_sum_to_floats():
    """Int fields are summed exactly and output as float; float and mixed fields too."""
    records = [
        (BASE_S, {"k": "a", "qty": 2**53, "price": 0.5}),
        (BASE_S + 1, {"k": "a", "qty": 1, "price": 1}),
        (BASE_S + 2, {"k": "a", "qty": 1, "price": 2.25}),
    ]
    with _batch() as p:
        routed = _windowed(p, records) | AggregateMetrics(
            key_field="k", metrics="sum:qty,sum:price,min:qty,max:price"
        )
        sums = routed.main | beam.Map(
            lambda r: (r["sum_qty"], r["sum_price"], r["min_qty"], r["max_price"])
        )
        assert_that(sums, equal_to([(float(2**53 + 2), 3.75, 1.0, 2.25)]), label="ExactFloatSums")
        types = sums | beam.Map(lambda values: tuple(type(v).__name__ for v in values))
        assert_that(types, equal_to([("float",) * 4]), label="AllFloats")


def test_mean_is_sum_over_count_per_window():
    """The mean of each window is its sum divided by its count."""
    records = [(BASE_S + s, {"k": "a", "x": x}) for s, x in [(1, 1), (2, 2), (3, 6), (61, 5)]]
    with _batch() as p:
        routed = _windowed(p, records) | AggregateMetrics(key_field="k", metrics="count,mean:x")
        means = routed.main | beam.Map(lambda r: (r["window_start"], r["count"], r["mean_x"]))
        assert_that(
            means,
            equal_to([(_at(BASE_S), 3, 3.0), (_at(BASE_S + 60), 1, 5.0)]),
            label="MeanPerWindow",
        )


def test_window_bounds_are_utc_aware_datetimes():
    """window_start and window_end are tz-aware UTC datetimes of the record's window."""
    with _batch() as p:
        routed = _windowed(p, [(BASE_S + 30, {"k": "a"})]) | AggregateMetrics(
            key_field="k", metrics="count"
        )
        bounds = routed.main | beam.Map(
            lambda r: (r["window_start"], r["window_end"], r["window_start"].utcoffset())
        )
        assert_that(
            bounds,
            equal_to([(_at(BASE_S), _at(BASE_S + 60), dt.timedelta(0))]),
            label="UtcBounds",
        )


def test_invalid_records_go_to_dead_letter_and_are_excluded_from_rows():
    """A non-numeric field, a missing or empty key and NaN become dead letters, not row inputs."""
    good = [(BASE_S + i, {"user": "a", "amount": i, "id": i}) for i in range(1, 5)]
    bad = [
        (BASE_S + 10, {"user": "a", "amount": "12", "id": 10}),
        (BASE_S + 11, {"amount": 100, "id": 11}),
        (BASE_S + 12, {"user": "", "amount": 100, "id": 12}),
        (BASE_S + 13, {"user": "a", "amount": float("nan"), "id": 13}),
        (BASE_S + 14, {"user": "a", "amount": False, "id": 14}),
    ]
    expected = _expected_rows(good, "user", {"amount": ("amount",)})
    with _batch() as p:
        routed = _windowed(p, good + bad) | AggregateMetrics(
            key_field="user", metrics="count,sum:amount,min:amount,max:amount,mean:amount"
        )
        assert_that(routed.main, _rows_match(expected), label="OnlyValidRecords")
        letters = routed.dead_letter | beam.Map(
            lambda d: (d.stage, d.error_type, d.error_message.split(" (")[0], d.event_time)
        )
        assert_that(
            letters,
            equal_to(
                [
                    (
                        "aggregate",
                        "ValueError",
                        "field 'amount'='12' is not numeric",
                        "2023-11-14T22:14:10Z",
                    ),
                    (
                        "aggregate",
                        "MissingKeyError",
                        "key field 'user' is missing",
                        "2023-11-14T22:14:11Z",
                    ),
                    (
                        "aggregate",
                        "MissingKeyError",
                        "key field 'user' is empty",
                        "2023-11-14T22:14:12Z",
                    ),
                    (
                        "aggregate",
                        "ValueError",
                        "field 'amount'=nan is not a finite number",
                        "2023-11-14T22:14:13Z",
                    ),
                    (
                        "aggregate",
                        "ValueError",
                        "field 'amount'=False is not numeric",
                        "2023-11-14T22:14:14Z",
                    ),
                ]
            ),
            label="DeadLetters",
        )


def test_check_runs_at_parse_time_inside_apply_or_dead_letter():
    """``check`` pickles into a pipeline step: invalid records are dead letters before windowing."""
    agg = AggregateMetrics(key_field="user", metrics="count,sum:amount")
    records = [(BASE_S, {"user": "a", "amount": 1}), (BASE_S + 1, {"user": "a", "amount": "x"})]
    with _batch() as p:
        parsed = (
            p
            | beam.Create(records)
            | beam.MapTuple(lambda ts, record: TimestampedValue(record, ts))
            | ApplyOrDeadLetter(agg.check, stage="validate")
        )
        routed = parsed.main | beam.WindowInto(FixedWindows(60)) | agg
        stages = parsed.dead_letter | beam.Map(lambda d: d.stage)
        assert_that(stages, equal_to(["validate"]), label="CheckedAtParse")
        assert_that(
            routed.main | beam.Map(lambda r: (r["count"], r["sum_amount"])),
            equal_to([(1, 1.0)]),
            label="RowsFromCheckedRecords",
        )
        assert_that(routed.dead_letter, equal_to([]), label="NothingLeftForAggregate")


def test_global_window_input_is_refused():
    """Input still in the global window is refused when the transform is applied."""
    p = beam.Pipeline("FnApiRunner")
    records = p | beam.Create([{"k": "a"}])
    with pytest.raises(ValueError, match="global window"):
        _ = records | AggregateMetrics(key_field="k", metrics="count")


def test_pane_info_columns_mark_the_on_time_pane_in_batch():
    """with_pane_info adds pane columns; a batch run gives one final on-time pane per window."""
    with _batch() as p:
        routed = _windowed(p, [(BASE_S, {"k": "a"}), (BASE_S + 1, {"k": "a"})]) | AggregateMetrics(
            key_field="k", metrics="count", with_pane_info=True
        )
        panes = routed.main | beam.Map(
            lambda r: (r["count"], r["pane_timing"], r["pane_index"], type(r["is_last_pane"]))
        )
        # is_last_pane is what the runner reports: FnApiRunner's batch combine says False.
        assert_that(panes, equal_to([(2, "ON_TIME", 0, bool)]), label="OnTimePane")


# --- streaming: panes ---------------------------------------------------------------------------


def _stream_rows(accumulation_mode) -> tuple[TestPipeline, beam.PCollection]:
    """Two records, an early firing after 30 s of processing time, a third record, then on time."""
    stream = (
        TestStream()
        .advance_watermark_to(0)
        .add_elements(
            [
                TimestampedValue({"user": "a", "amount": 1}, 5),
                TimestampedValue({"user": "a", "amount": 2}, 10),
            ]
        )
        .advance_processing_time(31)
        .add_elements([TimestampedValue({"user": "a", "amount": 4}, 20)])
        .advance_watermark_to(60)
        .advance_watermark_to_infinity()
    )
    p = TestPipeline(runner="BundleBasedDirectRunner", options=PipelineOptions(streaming=True))
    routed = (
        p
        | stream
        | beam.WindowInto(
            FixedWindows(60),
            trigger=trigger.AfterWatermark(early=trigger.AfterProcessingTime(30)),
            accumulation_mode=accumulation_mode,
            allowed_lateness=0,
        )
        | AggregateMetrics(key_field="user", metrics="count,sum:amount", with_pane_info=True)
    )
    return p, routed.main


def _pane_row(count: int, total: float, timing: str, index: int, last: bool) -> dict[str, Any]:
    return {
        "window_start": _at(0),
        "window_end": _at(60),
        "key": "a",
        "count": count,
        "sum_amount": total,
        "pane_timing": timing,
        "pane_index": index,
        "is_last_pane": last,
    }


def test_early_pane_then_on_time_pane_accumulating():
    """An accumulating early trigger gives a speculative row, then an on-time row covering all."""
    p, rows = _stream_rows(trigger.AccumulationMode.ACCUMULATING)
    with p:
        assert_that(
            rows,
            equal_to_per_window(
                {
                    IntervalWindow(0, 60): [
                        _pane_row(2, 3.0, "EARLY", 0, last=False),
                        _pane_row(3, 7.0, "ON_TIME", 1, last=True),
                    ]
                }
            ),
            label="AccumulatingPanes",
        )


def test_early_pane_then_on_time_pane_discarding():
    """A discarding early trigger gives rows that each cover only their own pane's records."""
    p, rows = _stream_rows(trigger.AccumulationMode.DISCARDING)
    with p:
        assert_that(
            rows,
            equal_to_per_window(
                {
                    IntervalWindow(0, 60): [
                        _pane_row(2, 3.0, "EARLY", 0, last=False),
                        _pane_row(1, 4.0, "ON_TIME", 1, last=True),
                    ]
                }
            ),
            label="DiscardingPanes",
        )


def test_late_pane_row_follows_on_time_row_within_allowed_lateness():
    """A record late but within allowed lateness yields a LATE pane row (accumulating)."""
    stream = (
        TestStream()
        .advance_watermark_to(0)
        .add_elements([TimestampedValue({"user": "a", "amount": 1}, 5)])
        .advance_watermark_to(70)
        .add_elements([TimestampedValue({"user": "a", "amount": 2}, 30)])
        .advance_watermark_to_infinity()
    )
    p = TestPipeline(runner="BundleBasedDirectRunner", options=PipelineOptions(streaming=True))
    with p:
        routed = (
            p
            | stream
            | beam.WindowInto(
                FixedWindows(60),
                trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                allowed_lateness=60,
            )
            | AggregateMetrics(key_field="user", metrics="count,sum:amount", with_pane_info=True)
        )
        panes = routed.main | beam.Map(
            lambda r: (r["window_start"], r["count"], r["sum_amount"], r["pane_timing"])
        )
        assert_that(
            panes,
            equal_to([(_at(0), 1, 1.0, "ON_TIME"), (_at(0), 2, 3.0, "LATE")]),
            label="OnTimeThenLate",
        )


def test_the_module_examples_run():
    """check_record's and record_check's examples run as written."""
    import doctest

    from headwater.transforms import aggregate

    outcome = doctest.testmod(aggregate, optionflags=doctest.ELLIPSIS)
    assert outcome.attempted > 0
    assert outcome.failed == 0


def test_the_parse_time_check_refuses_what_the_aggregation_refuses():
    """MetricsCheck (parse time, its checker built once) and check_record give one verdict."""
    from headwater.transforms.process import MetricsCheck

    metrics = parse_metrics("count,sum:amount,max:user.age")
    check = MetricsCheck("user.id", metrics)
    good = {"user": {"id": 7, "age": 30}, "amount": 2.5}
    check(good)
    for bad in ({"amount": 1}, {"user": {"id": 1, "age": 3}, "amount": "1"}, {"user": {"id": " "}}):
        with pytest.raises(ValueError, match="field") as refused:
            check(bad)
        with pytest.raises(ValueError, match="field") as also:
            check_record(bad, "user.id", metrics)
        assert str(refused.value) == str(also.value)
    unusable = MetricsCheck("user id", metrics)
    for _ in range(2):  # every record, as check_record refuses every record
        with pytest.raises(ValueError, match="key_field='user id'"):
            unusable(good)
