"""Batch stage: size and time windows, one queue per sequence-length bucket."""

from __future__ import annotations

from workers.stages.batch import MicroBatcher


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_full_bucket_is_released_at_once_and_buckets_do_not_mix() -> None:
    batcher: MicroBatcher[int] = MicroBatcher(3, 0.05, clock=FakeClock())
    assert batcher.add(1, 16) is None
    assert batcher.add(2, 32) is None
    assert batcher.add(3, 16) is None
    full = batcher.add(4, 16)
    assert full is not None and full.bucket == 16 and full.items == [1, 3, 4]
    assert len(batcher) == 1


def test_time_window_releases_partial_batches_in_due_order() -> None:
    clock = FakeClock()
    batcher: MicroBatcher[str] = MicroBatcher(10, 0.5, clock=clock)
    assert batcher.seconds_until_due() is None
    batcher.add("a", 16)
    clock.now += 0.25
    batcher.add("b", 32)
    assert batcher.due() == []
    assert batcher.seconds_until_due() == 0.25
    clock.now += 0.25
    due = batcher.due()
    assert [(b.bucket, b.items) for b in due] == [(16, ["a"])]
    clock.now += 0.25
    assert [(b.bucket, b.items) for b in batcher.due()] == [(32, ["b"])]
    assert len(batcher) == 0


def test_drain_returns_everything() -> None:
    batcher: MicroBatcher[int] = MicroBatcher(10, 5.0, clock=FakeClock())
    for i in range(5):
        batcher.add(i, 16 if i % 2 else 64)
    drained = batcher.drain()
    assert sorted(i for b in drained for i in b.items) == [0, 1, 2, 3, 4]
    assert batcher.drain() == [] and batcher.seconds_until_due() is None
