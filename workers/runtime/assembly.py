"""Assembly of one worker process, in data-flow order, and its run loop with signals and endpoints.

    listings.new -> consume -> validate (-> dead letters) -> cache -> batch -> infer -> decode
                 -> guard -> emit -> commit

Each stage gets only its own config section; every client and collaborator is built here and passed in.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from pathlib import Path

from confluent_kafka import Producer

from workers.backends import make_backend
from workers.contract.errors import BackendUnavailable, ConfigError
from workers.model.served import ServedModel
from workers.runtime.config import WorkerConfig
from workers.runtime.metrics import WorkerMetrics, start_http_endpoint
from workers.runtime.model_swap import ModelFollower, check_serving, pin_triton_version
from workers.runtime.producer import AsyncProducer, make_producer
from workers.runtime.worker import StreamWorker
from workers.stages.batch import MicroBatcher
from workers.stages.cache import ResultCache, make_redis_client
from workers.stages.commit import OffsetTracker, commit_reporter
from workers.stages.commit_policy import make_commit_policy
from workers.stages.consume import KafkaSource, make_consumer
from workers.stages.dead_letter import DeadLetterWriter
from workers.stages.emit import AttributeEmitter
from workers.stages.guard import StaleUpdateGuard
from workers.stages.infer import BatchEnricher
from workers.stages.item import WorkItem
from workers.stages.serving import Serving
from workers.stages.validate import ListingValidator

__all__ = ["build_worker", "check_model_dir", "run_worker", "serve", "wait_for_backend"]

log = logging.getLogger(__name__)


def build_worker(config: WorkerConfig, *, metrics: WorkerMetrics | None = None) -> StreamWorker:
    """Every collaborator of a `StreamWorker`, built from `config`, in the order the data flows."""
    model_dir = check_model_dir(config)
    model = ServedModel.load(model_dir)  # tokenizer (batch buckets) + label maps (decode)
    metrics = metrics if metrics is not None else WorkerMetrics()
    redis_url, redis_cluster = config.cache.redis_url, config.cache.redis_cluster
    redis = make_redis_client(redis_url, cluster=redis_cluster) if redis_url else None
    kafka, batch = config.kafka, config.batch
    tracker = OffsetTracker()  # offsets consumed -> finished (acknowledged output) -> committed
    consumer = make_consumer(kafka, config.worker_id, on_commit=commit_reporter(tracker))
    producer = make_producer(kafka, config.worker_id)
    delivery = AsyncProducer(producer)

    source = KafkaSource(consumer, kafka.input_topic)
    validator = ListingValidator()
    dead_letters = DeadLetterWriter(
        topic=kafka.dlq_topic, worker_id=config.worker_id, producer=delivery, tracker=tracker, metrics=metrics
    )
    metrics.model_info.labels(name=model.name, version=model.version, digest=model.digest).set(1)
    cache = ResultCache(redis, model.digest, config.cache.ttl_s, metrics)
    batcher: MicroBatcher[WorkItem] = MicroBatcher(batch.max_batch, batch.max_wait_ms / 1000)
    backend = make_backend(config.backend, max_in_flight=batch.max_in_flight, metrics=metrics)
    serving = Serving(model, backend, cache, config.backend.triton_version)  # the model in force
    enricher = BatchEnricher(config.flow, metrics)  # infer -> decode
    guard = StaleUpdateGuard(
        store=redis,
        namespace=f"enrich:version:{kafka.output_topic}",
        on_store_error=lambda _: metrics.cache_errors.inc(),
        metrics=metrics,
    )
    emitter = AttributeEmitter(
        topic=kafka.output_topic, worker_id=config.worker_id, guard=guard, producer=delivery, tracker=tracker,
        metrics=metrics,
    )  # fmt: skip

    def renew_producer() -> Producer:  # exactly-once, after a fatal producer error (see the policy)
        fresh = make_producer(kafka, config.worker_id)
        delivery.replace(fresh)
        return fresh

    commits = make_commit_policy(  # its consumer calls go through the source (see KafkaSource)
        exactly_once=kafka.exactly_once, consumer=source, producer=producer, tracker=tracker,
        renew=renew_producer,
    )  # fmt: skip
    worker = StreamWorker(
        kafka=kafka, batch=batch, worker_id=config.worker_id, source=source, validator=validator,
        dead_letters=dead_letters, serving=serving, batcher=batcher, enricher=enricher, emitter=emitter,
        producer=delivery, tracker=tracker, commits=commits, metrics=metrics,
    )  # fmt: skip
    worker.control = ModelFollower(worker, config).run  # hot swap: follows the control topic
    return worker


def check_model_dir(config: WorkerConfig) -> Path:
    """The configured model directory; ConfigError naming the setting when it is missing or incomplete."""
    model_dir = config.backend.model_dir
    if model_dir is None:
        raise ConfigError(
            "no model directory: set ENRICH_MODEL_DIR / --model-dir to an exported model "
            "(`enrich train` then `enrich export`; `enrich demo` does both)"
        )
    missing = [
        n for n in ("model_info.json", "labels.json", "tokenizer.json") if not (model_dir / n).is_file()
    ]
    if missing:
        raise ConfigError(f"model directory {model_dir} lacks {', '.join(missing)}: is it an exported model?")
    return model_dir


async def wait_for_backend(worker: StreamWorker, config: WorkerConfig, timeout_s: float = 120.0) -> None:
    """Start-up check of the served model, by the backend itself (Triton: live, ready, config fits, the
    digest the model directory's), then one probe inference whose output widths must be the label maps'
    sizes. A mismatch is a ModelMismatch: `enrich worker` exits 2 with the message, never a crash loop of
    IndexErrors inside decode."""
    serving, model = worker.serving, worker.model
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            where = f"the served model ({config.backend.kind})"
            await check_serving(model, serving.backend, max_batch=config.batch.max_batch, where=where)
            # Triton: call the version that holds this model from now on, so that a newer version loaded
            # for a rollout (`enrich rollout set`) is never called with this model's tokenizer and labels.
            serving.triton_version = await pin_triton_version(serving.backend, model.digest)
            log.info("serving model %s %s (%s)", model.name, model.version, model.short_digest)
            return
        except BackendUnavailable as exc:
            if time.monotonic() > deadline:
                raise
            log.info("waiting for the inference backend: %s", exc)
            await asyncio.sleep(1.0)


async def run_worker(
    config: WorkerConfig, stop: asyncio.Event, *, metrics: WorkerMetrics | None = None
) -> None:
    """Build a worker, serve its endpoints, and process until `stop` is set."""
    worker = build_worker(config, metrics=metrics)
    server = None
    if config.metrics.port >= 0:
        server = start_http_endpoint(
            worker.metrics, config.metrics.port, worker.is_live, worker.is_ready, host=config.metrics.host
        )
    try:
        try:
            await wait_for_backend(worker, config)
        except BaseException:
            await worker.abandon()
            raise
        # What start-up allocated (model runtime, tokenizer, clients) lives as long as the process: keep it
        # out of the collections the hot path's allocations trigger (measured: ~+10 % events/s on hits).
        gc.freeze()
        await worker.run(stop)
    finally:
        if server is not None:
            server.close()


def serve(config: WorkerConfig) -> int:
    """The `enrich worker` process: SIGTERM/SIGINT drain in-flight work, commit, and exit 0."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(config, stop)

    asyncio.run(main())
    return 0
