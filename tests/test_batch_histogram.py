"""BatchHistogram exports what prometheus_client's Histogram exports for the same values (pure logic)."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from workers.runtime.batch_histogram import BatchHistogram

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


def _series(registry: CollectorRegistry) -> dict[str, float]:
    """Every exported sample but `_created`, by its exposition name and labels."""
    lines = generate_latest(registry).decode().splitlines()
    pairs = (line.rsplit(" ", 1) for line in lines if not line.startswith("#") and "_created" not in line)
    return {name: float(value) for name, value in pairs}


def test_same_exposition_as_a_histogram_observed_one_value_at_a_time() -> None:
    rng = random.Random(7)
    values = [rng.choice((0.0, 0.01, 1.0, 3600.0, 5000.0)) for _ in range(50)]  # on and past the bounds
    values += [rng.expovariate(0.5) for _ in range(2000)]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("enrich_freshness_seconds", "doc", BUCKETS, ours)
    reference = Histogram("enrich_freshness_seconds", "doc", buckets=BUCKETS, registry=theirs)
    for start in range(0, len(values), 300):
        batch.observe_many(values[start : start + 300])
    for value in values:
        reference.observe(value)
    mine, reference_series = _series(ours), _series(theirs)
    assert mine.keys() == reference_series.keys()
    assert mine == pytest.approx(reference_series)  # the sums add in another order
    assert ours.get_sample_value("enrich_freshness_seconds_count") == len(values)
    assert ours.get_sample_value("enrich_freshness_seconds_bucket", {"le": "1.0"}) == sum(
        v <= 1 for v in values
    )


def test_an_empty_batch_and_a_fresh_histogram_export_zeros() -> None:
    registry = CollectorRegistry()
    batch = BatchHistogram("h", "doc", (1, 2), registry)
    batch.observe_many([])
    assert registry.get_sample_value("h_count") == 0 and registry.get_sample_value("h_sum") == 0
    assert registry.get_sample_value("h_bucket", {"le": "+Inf"}) == 0
