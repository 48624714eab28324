"""Accounting counters: counted by the pipeline, read back from the result, identity checked."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from headwater.core.accounting import Accounting
from headwater.testing.assertions import assert_accounting
from headwater.transforms.accounting import CountAs


def test_counters_read_back_from_the_result():
    """CountAs counts elements; Accounting.from_result reads them; the identity is checked."""
    p = TestPipeline(runner="FnApiRunner", blocking=True)
    numbers = p | beam.Create(range(10)) | "in" >> CountAs("records_in")
    _ = numbers | beam.Filter(lambda n: n % 3) | "out" >> CountAs("output")
    _ = numbers | beam.Filter(lambda n: not n % 3) | "dup" >> CountAs("duplicate")
    result = p.run()
    accounting = assert_accounting(result, records_in=10, output=6, duplicate=4)
    assert accounting.to_dict()["identity_holds"] is True


def test_broken_identity_is_reported():
    """A record counted in but in no outcome makes assert_accounting fail."""
    with pytest.raises(AssertionError, match="identity broken"):
        assert_accounting(Accounting(records_in=3, output=1, duplicate=1))
    with pytest.raises(AssertionError, match="output=1 \\(expected 2\\)"):
        assert_accounting(Accounting(records_in=1, output=1), output=2)


def test_unknown_counter_is_refused():
    """CountAs only knows the five accounting counters."""
    with pytest.raises(ValueError, match="counter='lost'"):
        CountAs("lost")
