"""Shared pipeline plumbing: what the Kafka source is asked to do in batch and streaming."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from headwater.pipelines import _common

KAFKA = {
    "source": "kafka",
    "bootstrap_servers": "127.0.0.1:9",
    "topic": "events",
    "format": "json",
    "event_time_field": "event_time",
    "event_time_unit": "ms",
}


def _kafka_read(*flags: str, **values):
    p = beam.Pipeline("FnApiRunner", options=PipelineOptions(list(flags)))
    return _common.read_source(p, {**KAFKA, **values}).kafka


def test_batch_kafka_read_leaves_event_time_to_the_parse_step():
    """A read that ends by itself, in batch, does not decode values for a watermark."""
    read = _kafka_read(stop_at_end=True)
    assert read.event_time is None
    assert read.value_format is None


def test_streaming_kafka_read_takes_event_time_for_its_watermark():
    """With --streaming the source decodes event times: its watermark depends on them."""
    read = _kafka_read("--streaming", stop_at_end=True)
    assert read.event_time is not None
    assert read.event_time.field == "event_time"
