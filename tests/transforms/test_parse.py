"""ParseRecords stamps each record with its event time, in the windows its input's WindowFn
gives that time: straight into the global window when the input is there (core.stamps), by
the WindowFn again when the input was windowed before parsing."""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import FixedWindows, GlobalWindow, TimestampedValue

from headwater.core.stamps import in_global_window
from headwater.transforms.parse import ParseFn, ParseRecords
from headwater.windowing.eventtime import EventTimeExtractor

EVENT_TIME = EventTimeExtractor(field="t", unit="s")


class _Where(beam.DoFn):
    def process(self, record, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        where = "global" if window == GlobalWindow() else int(window.start)
        yield record["t"], int(timestamp), where


def _parsed(windowed: bool) -> None:
    lines = [b'{"t": 5}', b'{"t": 65}', b'{"t": 130}']
    with TestPipeline("FnApiRunner") as p:
        raw = p | beam.Create(lines) | beam.Map(lambda line: TimestampedValue(line, 0))
        if windowed:
            raw = raw | beam.WindowInto(FixedWindows(60))
        parsed = raw | ParseRecords(decode=json.loads, event_time=EVENT_TIME)
        where = parsed.main | beam.ParDo(_Where())
        expected = [(5, 5, 0), (65, 65, 60), (130, 130, 120)] if windowed else None
        expected = expected or [(5, 5, "global"), (65, 65, "global"), (130, 130, "global")]
        assert_that(where, equal_to(expected))


def test_records_in_the_global_window_stay_there_stamped_with_their_event_time():
    _parsed(windowed=False)


def test_records_of_a_windowed_input_go_to_the_windows_of_their_event_time():
    _parsed(windowed=True)


def test_the_fn_yields_windowed_values_only_for_an_input_in_the_global_window():
    for global_window, kind in ((True, type(in_global_window(0, 0))), (False, TimestampedValue)):
        fn = ParseFn(json.loads, EVENT_TIME, (), global_window=global_window)
        [out] = list(fn.process(b'{"t": 7}'))
        assert type(out) is kind
        assert (out.value, out.timestamp.micros) == ({"t": 7}, 7_000_000)
