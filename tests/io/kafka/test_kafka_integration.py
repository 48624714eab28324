"""ReadFromKafka / WriteToKafka against Apache Kafka (or $HEADWATER_TEST_BOOTSTRAP); a smoke set
(``ON_BOTH_BROKERS``) also runs on Tansu, the broker of ``make demo``.

Tansu reports a partition's end offset as (base offset of its last batch + 1), so every helper
here sends each partition's last record in a batch of its own (a flush before it).
"""

from __future__ import annotations

import json
import logging
import time
import uuid

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to
from confluent_kafka import Consumer, Producer, TopicPartition

from headwater.io.formats import JsonFormat
from headwater.io.kafka import KafkaDeliveryError, KafkaRecord, ReadFromKafka, WriteToKafka
from headwater.transforms.deadletter import ApplyOrDeadLetter
from headwater.windowing.eventtime import EventTimeExtractor

pytestmark = pytest.mark.integration

PARTITIONS = 3
ON_BOTH_BROKERS = pytest.mark.parametrize(
    "kafka_bootstrap", ["apache-kafka", "tansu"], indirect=True
)


def produce(bootstrap, topic, rows, *, partitions=PARTITIONS):
    """Sends ``rows`` (partition, key, value, timestamp_ms, headers), last per partition alone."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    last = {}
    for index, row in enumerate(rows):
        last[row[0]] = index
    for index, (partition, key, value, ts, headers) in enumerate(rows):
        if index == last[partition]:
            assert producer.flush(10) == 0
        producer.produce(
            topic, key=key, value=value, partition=partition, timestamp=ts, headers=headers
        )
    assert producer.flush(10) == 0


def events(n, *, start=0, partitions=PARTITIONS):
    """``n`` JSON events spread over ``partitions`` as produce() rows."""
    rows = []
    for i in range(start, start + n):
        value = json.dumps({"id": i, "event_time": 1_700_000_000_000 + i}).encode()
        rows.append((i % partitions, f"k{i}".encode(), value, 1_700_000_000_000 + i, None))
    return rows


def coordinates(record):
    return (record.partition, record.key, record.value)


@ON_BOTH_BROKERS
def test_bounded_read_outputs_exactly_the_produced_records(kafka_bootstrap, kafka_topic):
    """60 events over 3 partitions come back once each: no loss, no extra."""
    rows = events(60)
    produce(kafka_bootstrap, kafka_topic, rows)
    expected = [(p, k, v) for p, k, v, _, _ in rows]
    with beam.Pipeline("FnApiRunner") as p:
        records = p | ReadFromKafka(
            bootstrap_servers=kafka_bootstrap, topics=kafka_topic, stop_at_end=True
        )
        assert_that(records | beam.Map(coordinates), equal_to(expected), label="all records")
        offsets = records | "Offsets" >> beam.Map(lambda r: (r.partition, r.offset))
        assert_that(
            offsets,
            equal_to([(part, off) for part in range(PARTITIONS) for off in range(20)]),
            label="offsets",
        )


def test_kafka_timestamp_is_the_element_timestamp(kafka_bootstrap, kafka_topic):
    """Without event_time, each element carries its Kafka record timestamp."""
    rows = events(6)
    produce(kafka_bootstrap, kafka_topic, rows)
    with beam.Pipeline("FnApiRunner") as p:
        stamped = (
            p
            | ReadFromKafka(bootstrap_servers=kafka_bootstrap, topics=kafka_topic, stop_at_end=True)
            | beam.Map(lambda r, ts=beam.DoFn.TimestampParam: (r.timestamp_ms, ts.micros // 1000))
        )
        assert_that(stamped, equal_to([(ts, ts) for *_, ts, _ in rows]), label="timestamps")


def test_event_time_field_sets_element_timestamp(kafka_bootstrap, kafka_topic):
    """event_time=EventTimeExtractor reads the timestamp from the decoded value."""
    rows = [(0, None, json.dumps({"at": 5_000 + i}).encode(), 1, None) for i in range(3)]
    produce(kafka_bootstrap, kafka_topic, rows)
    with beam.Pipeline("FnApiRunner") as p:
        stamped = (
            p
            | ReadFromKafka(
                bootstrap_servers=kafka_bootstrap,
                topics=kafka_topic,
                stop_at_end=True,
                event_time=EventTimeExtractor(field="at", unit="ms"),
            )
            | beam.Map(lambda r, ts=beam.DoFn.TimestampParam: ts.micros // 1000)
        )
        assert_that(stamped, equal_to([5_000, 5_001, 5_002]), label="event times")


@ON_BOTH_BROKERS
def test_second_run_from_committed_reads_only_new_records(kafka_bootstrap, kafka_topic):
    """commit_on_finalize commits after the run; start='committed' then reads only what is new."""
    group = f"g-{uuid.uuid4().hex[:8]}"
    first, second = events(9), events(6, start=9)
    produce(kafka_bootstrap, kafka_topic, first)
    read = {
        "bootstrap_servers": kafka_bootstrap,
        "topics": kafka_topic,
        "stop_at_end": True,
        "group_id": group,
        "commit_on_finalize": True,
    }
    with beam.Pipeline("FnApiRunner") as p:
        out = p | ReadFromKafka(**read) | beam.Map(coordinates)
        assert_that(out, equal_to([(p_, k, v) for p_, k, v, _, _ in first]), label="first run")
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    committed = consumer.committed(
        [TopicPartition(kafka_topic, part) for part in range(PARTITIONS)], timeout=10
    )
    consumer.close()
    assert [tp.offset for tp in committed] == [3, 3, 3]
    produce(kafka_bootstrap, kafka_topic, second)
    with beam.Pipeline("FnApiRunner") as p:
        out = p | ReadFromKafka(**read, start="committed") | beam.Map(coordinates)
        assert_that(out, equal_to([(p_, k, v) for p_, k, v, _, _ in second]), label="new only")


def test_without_commit_on_finalize_nothing_is_committed(kafka_bootstrap, kafka_topic):
    """commit_on_finalize=False leaves the group's offsets alone."""
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, kafka_topic, events(3))
    with beam.Pipeline("FnApiRunner") as p:
        _ = p | ReadFromKafka(
            bootstrap_servers=kafka_bootstrap, topics=kafka_topic, stop_at_end=True, group_id=group
        )
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    committed = consumer.committed([TopicPartition(kafka_topic, 0)], timeout=10)
    consumer.close()
    assert committed[0].offset < 0


@ON_BOTH_BROKERS
def test_poison_message_yields_one_dead_letter_with_coordinates(kafka_bootstrap, kafka_topic):
    """Undecodable bytes become one dead letter with topic/partition/offset; the rest decode."""
    rows = events(8)
    rows.insert(4, (1, b"bad", b"\xff{not json", 1_700_000_000_100, None))
    produce(kafka_bootstrap, kafka_topic, rows)
    poison_offset = sum(1 for r in rows[:4] if r[0] == 1)
    with beam.Pipeline("FnApiRunner") as p:
        records = p | ReadFromKafka(
            bootstrap_servers=kafka_bootstrap, topics=kafka_topic, stop_at_end=True
        )
        routed = records | ApplyOrDeadLetter(JsonFormat().decode, stage="decode")
        assert_that(
            routed.main | beam.Map(lambda d: d["id"]), equal_to(list(range(8))), label="decoded"
        )
        assert_that(
            routed.dead_letter
            | beam.Map(lambda d: (d.stage, d.payload, dict(d.origin), "UTF-8" in d.error_message)),
            equal_to(
                [
                    (
                        "decode",
                        b"\xff{not json",
                        {"topic": kafka_topic, "partition": 1, "offset": poison_offset},
                        True,
                    ),
                ]
            ),
            label="dead letter",
        )


def test_max_records_reads_that_many_in_total(kafka_bootstrap, kafka_topic):
    """max_records=7 over 3 partitions of 10 records each reads 7 distinct records."""
    produce(kafka_bootstrap, kafka_topic, events(30))
    with beam.Pipeline("FnApiRunner") as p:
        count = (
            p
            | ReadFromKafka(bootstrap_servers=kafka_bootstrap, topics=kafka_topic, max_records=7)
            | beam.Map(coordinates)
            | beam.Distinct()
            | beam.combiners.Count.Globally()
        )
        assert_that(count, equal_to([7]), label="count")


def test_explicit_start_offsets_skip_earlier_records(kafka_bootstrap, kafka_topic):
    """start={(topic, p): offset} starts that partition there; others start at the earliest."""
    produce(kafka_bootstrap, kafka_topic, events(9))
    with beam.Pipeline("FnApiRunner") as p:
        out = (
            p
            | ReadFromKafka(
                bootstrap_servers=kafka_bootstrap,
                topics=kafka_topic,
                stop_at_end=True,
                start={(kafka_topic, 0): 2},
            )
            | beam.Map(lambda r: (r.partition, r.offset))
        )
        assert_that(
            out, equal_to([(0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]), label="offsets"
        )


def test_latest_start_with_stop_at_end_reads_nothing(kafka_bootstrap, kafka_topic):
    """start='latest' begins after the records present at start."""
    produce(kafka_bootstrap, kafka_topic, events(6))
    with beam.Pipeline("FnApiRunner") as p:
        out = p | ReadFromKafka(
            bootstrap_servers=kafka_bootstrap, topics=kafka_topic, stop_at_end=True, start="latest"
        )
        assert_that(out, equal_to([]), label="nothing")


def test_max_duration_ends_a_read_of_an_idle_topic(kafka_bootstrap, kafka_topic):
    """max_duration bounds a read that would otherwise wait for new records forever."""
    rows = events(3)
    produce(kafka_bootstrap, kafka_topic, rows)
    produced = {(p_, k, v) for p_, k, v, _, _ in rows}
    began = time.monotonic()
    with beam.Pipeline("FnApiRunner") as p:
        out = p | ReadFromKafka(
            bootstrap_servers=kafka_bootstrap,
            topics=kafka_topic,
            max_duration="2s",
            poll_interval="200ms",
        )
        # The deadline is wall clock from the start: partitions read later may get fewer records.
        assert_that(
            out | beam.Map(coordinates) | beam.combiners.ToList(),
            lambda got: _assert_subset(got[0], produced),
            label="subset",
        )
    assert time.monotonic() - began < 20


def _assert_subset(got, produced):
    assert got, "the first partition is read before the deadline"
    assert len(got) == len(set(got)), got
    assert set(got) <= produced, got


@ON_BOTH_BROKERS
def test_write_then_read_preserves_key_value_headers_timestamp(kafka_bootstrap, make_kafka_topic):
    """WriteToKafka -> ReadFromKafka keeps key, value, headers and timestamp of every record."""
    topic = make_kafka_topic(1)
    sent = [
        KafkaRecord(
            "src",
            0,
            i,
            f"k{i}".encode(),
            f"v{i}".encode(),
            1_650_000_000_000 + i,
            (("trace", f"t{i}".encode()), ("kind", b"x")),
        )
        for i in range(5)
    ]
    with beam.Pipeline("FnApiRunner") as p:
        _ = p | beam.Create(sent[:4]) | WriteToKafka(bootstrap_servers=kafka_bootstrap, topic=topic)
    with beam.Pipeline("FnApiRunner") as p:  # the last record in a batch of its own (Tansu)
        _ = p | beam.Create(sent[4:]) | WriteToKafka(bootstrap_servers=kafka_bootstrap, topic=topic)
    with beam.Pipeline("FnApiRunner") as p:
        got = (
            p
            | ReadFromKafka(bootstrap_servers=kafka_bootstrap, topics=topic, stop_at_end=True)
            | beam.Map(lambda r: (r.key, r.value, r.timestamp_ms, r.headers))
        )
        assert_that(
            got,
            equal_to([(r.key, r.value, r.timestamp_ms, r.headers) for r in sent]),
            label="round trip",
        )


def test_write_dicts_with_key_fn_encodes_json(kafka_bootstrap, make_kafka_topic):
    """Dict elements are JSON-encoded and key_fn sets the key."""
    topic = make_kafka_topic(1)
    with beam.Pipeline("FnApiRunner") as p:
        _ = (
            p
            | beam.Create([{"id": 1}])
            | WriteToKafka(
                bootstrap_servers=kafka_bootstrap, topic=topic, key_fn=lambda r: str(r["id"])
            )
        )
    with beam.Pipeline("FnApiRunner") as p:
        got = (
            p
            | ReadFromKafka(bootstrap_servers=kafka_bootstrap, topics=topic, stop_at_end=True)
            | beam.Map(lambda r: (r.key, JsonFormat().decode(r)))
        )
        assert_that(got, equal_to([(b"1", {"id": 1})]), label="written")


def test_delivery_failure_fails_the_pipeline_with_clear_error(kafka_bootstrap, make_kafka_topic):
    """A record over message.max.bytes fails the bundle with KafkaDeliveryError, not a drop."""
    topic = make_kafka_topic(1)
    with pytest.raises(KafkaDeliveryError) as caught, beam.Pipeline("FnApiRunner") as p:
        _ = (
            p
            | beam.Create([b"x" * 5_000])
            | WriteToKafka(
                bootstrap_servers=kafka_bootstrap,
                topic=topic,
                config={"message.max.bytes": 2_000},
            )
        )
    assert "MSG_SIZE_TOO_LARGE" in str(caught.value)
    assert topic in str(caught.value)


def test_read_of_missing_topic_names_it(kafka_bootstrap):
    """A topic that does not exist fails at start with its name in the error."""
    missing = f"no-such-topic-{uuid.uuid4().hex[:8]}"
    with pytest.raises(Exception, match=missing), beam.Pipeline("FnApiRunner") as p:
        _ = p | ReadFromKafka(bootstrap_servers=kafka_bootstrap, topics=missing, stop_at_end=True)


def test_secrets_never_reach_logs_during_a_read(kafka_bootstrap, kafka_topic, caplog):
    """A read with a secret in its config logs nothing that contains the secret."""
    produce(kafka_bootstrap, kafka_topic, events(3))
    caplog.set_level(logging.DEBUG)
    secret = "s3cr3t-value-xyz"
    with beam.Pipeline("FnApiRunner") as p:
        out = p | ReadFromKafka(
            bootstrap_servers=kafka_bootstrap,
            topics=kafka_topic,
            stop_at_end=True,
            config={"ssl.key.password": secret, "client.id": "hw-test"},
        )
        assert_that(out | beam.combiners.Count.Globally(), equal_to([3]), label="count")
    assert caplog.records, "the read should log its rare events"
    assert secret not in caplog.text


class _SinkDownError(RuntimeError):
    """The output could not be made durable."""


def _fail_sink(_row):
    raise _SinkDownError("disk full (simulated)")


def _committed(bootstrap, topic, group):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return [tp.offset for tp in consumer.committed(parts, timeout=10)]
    finally:
        consumer.close()


@pytest.mark.parametrize(
    ("bound", "end"),
    [
        ("--stop_at_end", [3, 3, 3]),
        ("--max_records=4", [3, 2, 2]),
        ("--max_duration=4s", None),
    ],
)
def test_bounded_pipeline_read_commits_only_after_its_sinks_succeed(
    kafka_bootstrap, kafka_topic, tmp_path, bound, end
):
    """--commit_offsets with any bound: a failing sink leaves the group's offsets unmoved."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from headwater.pipelines import windowed_metrics

    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, kafka_topic, events(9))
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    consumer.commit(
        offsets=[TopicPartition(kafka_topic, p, 1) for p in range(PARTITIONS)], asynchronous=False
    )
    consumer.close()
    flags = [
        "--source=kafka",
        f"--bootstrap_servers={kafka_bootstrap}",
        f"--topic={kafka_topic}",
        bound,
        "--start=committed",
        "--commit_offsets",
        f"--group_id={group}",
        "--event_time_field=event_time",
        "--id_field=id",
        "--key_field=id",
        "--metrics=count",
        "--window=fixed:60s",
        f"--output={tmp_path / 'out'}",
        f"--dead_letter={tmp_path / 'dlq'}",
    ]

    def run(sink):
        p = beam.Pipeline("FnApiRunner", options=PipelineOptions(flags))
        windowed_metrics.build(p, p.options, sink=sink)
        p.run().wait_until_finish()

    with pytest.raises(Exception, match="disk full"):
        run(beam.Map(_fail_sink))
    assert _committed(kafka_bootstrap, kafka_topic, group) == [1, 1, 1]
    run(None)
    if end is None:  # where a timed read ends depends on the clock: the end of what was written
        keys = [
            k
            for f in (tmp_path / "out").rglob("*.parquet")
            for k in pq.read_table(f)["key"].to_pylist()
        ]
        end = [
            max([int(k) // PARTITIONS + 1 for k in keys if int(k) % PARTITIONS == part], default=1)
            for part in range(PARTITIONS)
        ]
    assert _committed(kafka_bootstrap, kafka_topic, group) == end


def _one_batch(bootstrap, topic, values):
    """Sends ``values`` to partition 0 as one multi-record batch, as a user's producer would."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1000})
    for value in values:
        producer.produce(topic, value=value, partition=0)
    assert producer.flush(10) == 0


@ON_BOTH_BROKERS
def test_stop_at_end_reads_a_multi_record_batch_whole_or_refuses_the_broker(
    kafka_bootstrap, make_kafka_topic
):
    """A batch of 200 is read whole on Kafka; a broker whose end offset is behind it is refused."""
    topic = make_kafka_topic(1)
    values = [json.dumps({"id": i}).encode() for i in range(200)]
    _one_batch(kafka_bootstrap, topic, values)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "probe"})
    _low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    consumer.close()

    def read():
        with beam.Pipeline("FnApiRunner") as p:
            out = p | ReadFromKafka(
                bootstrap_servers=kafka_bootstrap, topics=topic, stop_at_end=True
            )
            assert_that(out | beam.Map(lambda r: r.value), equal_to(values), label="all")

    if high == len(values):  # a broker that reports Kafka's end offset
        read()
    else:  # Tansu: the base offset of the last batch + 1
        assert high < len(values)
        with pytest.raises(Exception, match=r"reports the partition's end offset .* as 1\b"):
            read()


def test_dead_letters_of_later_stages_name_topic_partition_offset(
    kafka_bootstrap, kafka_topic, tmp_path
):
    """A record rejected after decoding (no id: the dedup stage) keeps its Kafka coordinates."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from headwater.pipelines import windowed_metrics

    rows = events(6)
    rows[4] = (1, None, json.dumps({"event_time": 1_700_000_000_004}).encode(), 4, None)
    produce(kafka_bootstrap, kafka_topic, rows)
    flags = [
        "--source=kafka",
        f"--bootstrap_servers={kafka_bootstrap}",
        f"--topic={kafka_topic}",
        "--stop_at_end",
        "--event_time_field=event_time",
        "--id_field=id",
        "--key_field=event_time",
        "--metrics=count",
        "--window=fixed:60s",
        f"--output={tmp_path / 'out'}",
        f"--dead_letter={tmp_path / 'dlq'}",
    ]
    p = beam.Pipeline("FnApiRunner", options=PipelineOptions(flags))
    windowed_metrics.build(p, p.options)
    p.run().wait_until_finish()
    [letter] = [
        json.loads(text)
        for path in (tmp_path / "dlq").glob("*.jsonl")
        for text in path.read_text().splitlines()
    ]
    assert letter["stage"] == "dedup"
    assert letter["origin"] == {"topic": kafka_topic, "partition": 1, "offset": 1}


def test_records_deleted_before_the_read_are_counted_and_the_rest_is_read(
    kafka_bootstrap, kafka_topic, caplog, monkeypatch
):
    """The broker deletes partition 0's first 6 records after the read has planned to start at 0
    (delete-records, as retention does between planning and reading): the read names and counts
    them, reads the rest, and does not wait stall_timeout for records that no longer exist."""
    from confluent_kafka.admin import AdminClient

    from headwater.core.accounting import counter_total
    from headwater.io.kafka import partitions

    produce(kafka_bootstrap, kafka_topic, events(30))  # 10 per partition
    plan = partitions.resolve_starts

    def plan_then_delete(*args, **kwargs):
        starts = plan(*args, **kwargs)
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        for future in admin.delete_records([TopicPartition(kafka_topic, 0, 6)]).values():
            future.result(timeout=30)
        return starts

    monkeypatch.setattr(partitions, "resolve_starts", plan_then_delete)
    began = time.monotonic()
    p = beam.Pipeline("FnApiRunner")
    out = (
        p
        | ReadFromKafka(
            bootstrap_servers=kafka_bootstrap,
            topics=kafka_topic,
            stop_at_end=True,
            stall_timeout="30s",
        )
        | beam.Map(lambda r: (r.partition, r.offset))
    )
    expected = [(0, o) for o in range(6, 10)] + [(p_, o) for p_ in (1, 2) for o in range(10)]
    assert_that(out, equal_to(expected), label="offsets")
    result = p.run()
    result.wait_until_finish()
    assert time.monotonic() - began < 30  # not a stall_timeout
    assert counter_total(result, "kafka.offsets_deleted_before_read") == 6
    assert f"offsets 0 to 5 of {kafka_topic}[0] were deleted by the broker" in caplog.text
