"""headwater: event-time stream processing on Apache Beam.

Windowed, watermarked, deduplicating pipelines that run unchanged on the DirectRunner, Dataflow
and Flink, with native Kafka IO (confluent-kafka, no JVM). Every input record ends in exactly one
of four outcomes -- output, duplicate, dead letter or late -- and every run can prove it
(:mod:`headwater.transforms.accounting`).
"""

__version__ = "0.1.0"
