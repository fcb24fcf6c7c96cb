"""`enrich replay`: re-enrich a range of the input topic with the active model, into the output topic.

The stream worker itself runs the replay (`build_worker` + `StreamWorker.run`), with a bounded source in
place of the group member: its consumer is *assigned* each partition at its start offset (no
subscription, so the live group never rebalances) under a group of its own, `<group>.replay.<hash of the
command's range>`, whose commits never touch the live group's offsets. Each partition stops at its end
offset (`--to`, default the high watermark when the replay starts); `--rate` paces intake. A second run
of the same command resumes from the replay group's commits (`--fresh` starts over).

Every replayed event carries the Kafka header `enrich-replay: <replay group>`. Ordering is the stale-update
guard's rule (`workers.stages.guard`): an older listing_version never overtakes a newer one, and the same
listing_version from a newer model replaces the older model's result. The guard must see what the live
workers emitted, so a replay needs the shared version store (ENRICH_REDIS_URL) and waits for it when it
fails instead of deciding alone. Replay runs at-least-once (re-deliveries are admitted by the guard).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from workers.contract.errors import ConfigError, EnrichError
from workers.stages.consume import KafkaSource, PartitionsCallback

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message

    from workers.runtime.config import WorkerConfig
    from workers.runtime.worker import StreamWorker

__all__ = ["BoundedSource", "ReplayCounts", "parse_position", "register", "resolve_bounds", "run_replay"]

Bounds = dict[int, tuple[int, int]]  # partition -> [start, end)
Position = int | dict[int, int]  # a timestamp (epoch ms) or offsets per partition
_COUNTS = {"read": "events_in", "enriched": "events_out", "cache hits": "cache_hits",
           "dead-lettered": "dlq", "superseded by guard": "stale_dropped"}  # fmt: skip


def parse_position(text: str, topic: str) -> Position:
    """An ISO 8601 time or epoch milliseconds (-> ms), or `[topic:]partition:offset,...` (-> offsets)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        pass
    else:
        return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() * 1000)
    offsets: dict[int, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        fields = part.rsplit(":", 2)
        if len(fields) == 3 and fields[0] != topic:
            raise ConfigError(f"replay: {part!r} names topic {fields[0]!r}, the input topic is {topic!r}")
        try:
            offsets[int(fields[-2])] = int(fields[-1])
        except (ValueError, IndexError):
            raise ConfigError(
                f"replay: cannot read {part!r}: expected an ISO 8601 time, epoch milliseconds or "
                "[topic:]partition:offset,..."
            ) from None
    if not offsets:
        raise ConfigError(f"replay: empty position {text!r}")
    return offsets


def resolve_bounds(
    consumer: Consumer, topic: str, start: Position, end: Position | None, *, resume: bool = True
) -> Bounds:
    """[start, end) per partition: timestamps through offsets_for_times (none later: the high watermark),
    starts raised to the low watermark (older records are gone) and, with `resume`, to the offsets the
    consumer's group committed; a missing end is the high watermark now."""
    from confluent_kafka import TopicPartition

    metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise ConfigError(f"replay: input topic {topic!r} not found")
    named = start if isinstance(start, dict) else {}
    partitions = sorted(named) if named else sorted(metadata.partitions)
    unknown = [p for p in partitions if p not in metadata.partitions]
    if unknown:
        raise ConfigError(f"replay: topic {topic!r} has no partition {unknown}")
    marks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions}

    def offsets(position: Position | None) -> dict[int, int]:
        if position is None:
            return {p: marks[p][1] for p in partitions}
        if isinstance(position, dict):
            return {p: position.get(p, marks[p][1]) for p in partitions}
        query = [TopicPartition(topic, p, position) for p in partitions]
        found = consumer.offsets_for_times(query, timeout=10)
        return {tp.partition: tp.offset if tp.offset >= 0 else marks[tp.partition][1] for tp in found}

    starts, ends = offsets(start), offsets(end)
    committed: dict[int, int] = {}
    if resume:
        query = [TopicPartition(topic, p) for p in partitions]
        committed = {tp.partition: tp.offset for tp in consumer.committed(query, timeout=10)}
    return {p: (max(starts[p], marks[p][0], committed.get(p, -1)), ends[p]) for p in partitions}


class BoundedSource(KafkaSource):
    """Assigned (never subscribed) to `bounds`; each partition stops at its end; paced to `rate`/s."""

    def __init__(
        self, consumer: Consumer, topic: str, bounds: Bounds, rate: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        super().__init__(consumer, topic)
        self.bounds = bounds
        self.delivered = 0  # in-range records handed to the worker
        self._open = {p for p, (start, end) in bounds.items() if start < end}
        self._rate, self._clock = rate, clock
        self._budget, self._refilled = 0.0, clock()

    @property
    def exhausted(self) -> bool:
        """Every partition was read up to its end offset."""
        return not self._open

    def subscribe(
        self, *, on_assign: PartitionsCallback, on_revoke: PartitionsCallback, on_lost: PartitionsCallback
    ) -> None:
        from confluent_kafka import TopicPartition

        self.assigned.update((self.topic, p) for p in self._open)
        self.consumer.assign([TopicPartition(self.topic, p, self.bounds[p][0]) for p in sorted(self._open)])
        on_assign(sorted(self.assigned))

    def _assignment(self) -> list[Any]:
        # Finished partitions stay paused: the worker's resume (after a blocked backend) skips them.
        return [tp for tp in super()._assignment() if tp.partition in self._open]

    async def consume(self, max_messages: int, timeout_s: float) -> list[Message]:
        if self._rate is not None and self._open:
            max_messages = min(max_messages, await self._tokens())
        messages = await super().consume(max_messages, timeout_s)
        if self._rate is not None:
            self._budget -= len(messages)
        return messages

    async def _tokens(self) -> int:
        """Listings intake may take now (at least one: waits for it); at most 0.1 s worth, no burst."""
        assert self._rate is not None
        while True:
            now = self._clock()
            cap = max(1.0, self._rate / 10)
            self._budget = min(cap, self._budget + (now - self._refilled) * self._rate)
            self._refilled = now
            if self._budget >= 1:
                return int(self._budget)
            await asyncio.sleep((1 - self._budget) / self._rate)

    def _consume(self, max_messages: int, timeout_s: float) -> list[Message]:
        """Consume thread: drop records at or past their partition's end; close partitions whose position
        reached it (the position, not the last record's offset: transaction markers have no record)."""
        from confluent_kafka import TopicPartition

        if not self._open:
            time.sleep(timeout_s)  # nothing assigned to wait on; the stream loop stops soon
            return []
        kept = []
        for msg in super()._consume(max_messages, timeout_s):
            if msg.error() is None and msg.offset() >= self.bounds[msg.partition()][1]:
                continue
            kept.append(msg)
        self.delivered += sum(1 for msg in kept if msg.error() is None)
        tps = [TopicPartition(self.topic, p) for p in sorted(self._open)]
        done = [tp for tp in self.consumer.position(tps) if tp.offset >= self.bounds[tp.partition][1]]
        if done:
            self.consumer.pause(done)
            self._open.difference_update(tp.partition for tp in done)
        return kept


@dataclasses.dataclass
class ReplayCounts:
    group: str  # the replay's consumer group, also the value of its events' enrich-replay header
    counts: dict[str, int]  # read, enriched, cache hits, dead-lettered, superseded by guard
    complete: bool  # false: stopped early


def _counts(worker: StreamWorker) -> dict[str, int]:
    sums = dict.fromkeys(_COUNTS.values(), 0.0)
    for sample in (s for metric in worker.metrics.registry.collect() for s in metric.samples):
        if (name := sample.name.removeprefix("enrich_").removesuffix("_total")) in sums:
            sums[name] += sample.value if sample.name.endswith("_total") else 0
    return {label: int(sums[name]) for label, name in _COUNTS.items()}


def _progress(counts: dict[str, int], total: int, out: TextIO, width: int = 30) -> None:
    share = min(1.0, counts["read"] / total) if total else 1.0
    bar = "#" * int(share * width) + "." * (width - int(share * width))
    rest = "  ".join(f"{name} {value}" for name, value in counts.items() if name != "read")
    out.write(f"\r[{bar}] {counts['read']}/{total}  {rest}")
    out.flush()


async def run_replay(
    config: WorkerConfig, start: Position, end: Position | None = None, *, rate: float | None = None,
    fresh: bool = False, stop: asyncio.Event | None = None, progress: TextIO | None = None,
) -> ReplayCounts:  # fmt: skip
    """Replay [start, end) of the input topic (see the module docstring); `stop` ends it early (the work
    in flight is finished and committed, so the same command resumes)."""
    from workers.runtime.assembly import build_worker, wait_for_backend
    from workers.stages.consume import make_consumer

    kafka = config.kafka
    if not config.cache.redis_url:
        raise ConfigError(
            "replay needs ENRICH_REDIS_URL: without the shared version store the guard cannot see what the "
            "live workers emitted, and an older listing_version could overtake a newer one"
        )
    spec = f"{kafka.input_topic}|{start}|{end}".encode()
    group = f"{kafka.group_id}.replay.{hashlib.sha256(spec).hexdigest()[:12]}"
    config = dataclasses.replace(config, kafka=dataclasses.replace(kafka, group_id=group, exactly_once=False))
    probe = make_consumer(config.kafka, f"{config.worker_id}-probe")
    try:
        bounds = resolve_bounds(probe, kafka.input_topic, start, end, resume=not fresh)
    finally:
        probe.close()
    total = sum(max(0, e - s) for s, e in bounds.values())
    sources: list[BoundedSource] = []

    def make_source(consumer: Consumer, topic: str) -> BoundedSource:
        sources.append(BoundedSource(consumer, topic, bounds, rate))
        return sources[-1]

    worker = build_worker(config, make_source=make_source, replay_id=group)
    source, stop = sources[0], stop or asyncio.Event()
    try:
        await wait_for_backend(worker, config)
    except BaseException:
        await worker.abandon()  # its Kafka clients, backend and Redis client, as run_worker does
        raise
    finished = asyncio.Event()
    task = asyncio.create_task(worker.run(finished))
    while not task.done():
        counts = _counts(worker)
        if progress is not None:
            _progress(counts, total, progress)
        drained = source.exhausted and counts["read"] >= source.delivered and worker.unfinished == 0
        if drained or stop.is_set():
            finished.set()
        await asyncio.wait({task}, timeout=0.25)
    await task  # a failure of the worker is the replay's
    result = ReplayCounts(group, _counts(worker), complete=not stop.is_set())
    if progress is not None:
        _progress(result.counts, total, progress)
        progress.write("\n")
    return result


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from workers.runtime.config import add_config_arguments

    parser = subparsers.add_parser(
        "replay", help="re-enrich a range of the input topic with the active model (own consumer group)",
        description="Re-enrich [--from, --to) of the input topic into the output topic under the consumer "
        "group <group>.replay.<hash>, assigned (not subscribed): the live group is neither rebalanced nor "
        "committed to. Events carry the header enrich-replay. Needs ENRICH_REDIS_URL (the version store).",
    )  # fmt: skip
    positions = "an ISO 8601 time, epoch milliseconds, or [topic:]partition:offset,..."
    parser.add_argument("--from", dest="start", required=True, help=f"first record: {positions}")
    parser.add_argument("--to", dest="end", help=f"end, exclusive (default: the high watermark): {positions}")
    parser.add_argument("--rate", type=float, help="listings per second (default: as fast as it goes)")
    parser.add_argument("--fresh", action="store_true", help="start over instead of resuming a prior run")
    add_config_arguments(parser)
    parser.set_defaults(func=_replay)


def _replay(args: argparse.Namespace) -> int:
    from workers.runtime.config import load_config

    async def main() -> ReplayCounts:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        topic = config.kafka.input_topic
        end = parse_position(args.end, topic) if args.end else None
        return await run_replay(
            config, parse_position(args.start, topic), end, rate=args.rate, fresh=args.fresh, stop=stop,
            progress=sys.stderr,
        )  # fmt: skip

    try:
        config = load_config(args)
        if args.rate is not None and args.rate <= 0:
            raise ConfigError("replay: --rate must be > 0")
        result = asyncio.run(main())
    except EnrichError as exc:
        print(f"enrich replay: {exc}", file=sys.stderr)
        return 2
    state = "done" if result.complete else "stopped early (run the same command again to resume)"
    print(f"replay {result.group} {state}: " + ", ".join(f"{k} {v}" for k, v in result.counts.items()))
    return 0 if result.complete else 1
