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
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer, Producer

from workers.backends import make_backend
from workers.contract.errors import BackendUnavailable, ConfigError, ServiceUnreachable
from workers.model.served import ServedModel
from workers.runtime.broker import BrokerHealth, check_kafka
from workers.runtime.config import WorkerConfig
from workers.runtime.kafka_security import check_kafka_security, is_secured
from workers.runtime.metrics import WorkerMetrics, start_http_endpoint
from workers.runtime.model_swap import ModelFollower, check_serving, pin_triton_version
from workers.runtime.producer import AsyncProducer, make_producer
from workers.runtime.trial_follow import TrialFollower
from workers.runtime.worker import StreamWorker
from workers.stages.batch import MicroBatcher
from workers.stages.cache import ResultCache, redis_client_for
from workers.stages.commit import OffsetTracker, commit_reporter
from workers.stages.commit_policy import make_commit_policy
from workers.stages.consume import KafkaSource, consumer_settings, make_consumer
from workers.stages.dead_letter import DeadLetterWriter
from workers.stages.emit import AttributeEmitter
from workers.stages.guard import StaleUpdateGuard
from workers.stages.infer import BatchEnricher
from workers.stages.item import WorkItem
from workers.stages.lag import LagProbe
from workers.stages.review import ReviewTap, load_thresholds, unknown_names
from workers.stages.serving import Serving
from workers.stages.validate import ListingValidator

__all__ = [
    "REPLAY_HEADER",
    "build_worker",
    "check_broker",
    "check_model_dir",
    "run_worker",
    "serve",
    "wait_for_backend",
]

log = logging.getLogger(__name__)


REPLAY_HEADER = "enrich-replay"


def build_worker(
    config: WorkerConfig,
    *,
    metrics: WorkerMetrics | None = None,
    make_source: Callable[[Consumer, str], KafkaSource] = KafkaSource,
    replay_id: str | None = None,
) -> StreamWorker:
    """Every collaborator of a `StreamWorker`, built from `config`, in the order the data flows.

    Replay (`workers.runtime.replay`) passes its bounded source (`make_source`) and a `replay_id`: every
    event then carries the header `enrich-replay: <replay_id>`, and the guard waits for Redis rather than
    decide alone.
    """
    model_dir = check_model_dir(config)
    try:
        model = ServedModel.load(model_dir)  # tokenizer (batch buckets) + label maps (decode)
    except (ValueError, KeyError) as exc:  # labels.json / model_info.json / tokenizer.json unreadable
        raise ConfigError(f"model directory {model_dir} (ENRICH_MODEL_DIR / --model-dir): {exc}") from exc
    metrics = metrics if metrics is not None else WorkerMetrics()
    redis = redis_client_for(config.cache)  # the cache's and the guard's (None: no Redis configured)
    kafka, batch = config.kafka, config.batch
    tracker = OffsetTracker()  # offsets consumed -> finished (acknowledged output) -> committed
    broker = BrokerHealth()  # /readyz: does the consumer reach a broker now
    on_commit = commit_reporter(tracker, metrics.commit_failed)
    consumer = make_consumer(kafka, config.worker_id, on_commit=on_commit, extra=broker.client_settings())
    producer = make_producer(kafka, config.worker_id)
    delivery = AsyncProducer(producer)

    source = make_source(consumer, kafka.input_topic)
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
        wait_for_store=replay_id is not None,
    )
    emitter = AttributeEmitter(
        topic=kafka.output_topic, worker_id=config.worker_id, guard=guard, producer=delivery,
        tracker=tracker, metrics=metrics,
        headers=None if replay_id is None else [(REPLAY_HEADER, replay_id.encode())],
        review=review_tap(config, model, delivery, metrics),
    )  # fmt: skip

    def renew_producer() -> Producer:  # exactly-once, after a fatal producer error (see the policy)
        fresh = make_producer(kafka, config.worker_id)
        delivery.replace(fresh)
        return fresh

    commits = make_commit_policy(  # its consumer calls go through the source (see KafkaSource)
        exactly_once=kafka.exactly_once, consumer=source, producer=producer, tracker=tracker,
        renew=renew_producer, on_failure=metrics.commit_failed,
    )  # fmt: skip
    worker = StreamWorker(
        kafka=kafka, batch=batch, worker_id=config.worker_id, source=source, validator=validator,
        dead_letters=dead_letters, serving=serving, batcher=batcher, enricher=enricher, emitter=emitter,
        producer=delivery, tracker=tracker, commits=commits, metrics=metrics, broker=broker,
        lag_probe=LagProbe(kafka, f"{config.worker_id}-lag"),
    )  # fmt: skip
    if replay_id is None:  # a replay runs the model it was given
        # Hot swap, shadow and canary: follows the control topic.
        worker.control = ModelFollower(worker, config, TrialFollower(worker, config)).run
    return worker


def review_tap(
    config: WorkerConfig, model: ServedModel, producer: AsyncProducer, metrics: WorkerMetrics
) -> ReviewTap | None:
    """Emit's low-confidence review hook (None: ENRICH_REVIEW_TOPIC is empty); ConfigError for a bad
    thresholds file. Names the model does not know are logged, not refused: a later model may have them."""
    review = config.review
    if not review.topic:
        return None
    thresholds = load_thresholds(
        review.thresholds_file, category_min=review.category_min, attribute_min=review.attribute_min
    )
    labels = model.labels
    unknown = unknown_names(thresholds, labels.categories, {a for a in labels.tag_attributes if a})
    if unknown:
        log.warning("review thresholds name what model %s does not know: %s", model.short_digest,
                    ", ".join(unknown))  # fmt: skip
    return ReviewTap(topic=review.topic, thresholds=thresholds, producer=producer, counter=metrics.review)


def check_model_dir(config: WorkerConfig) -> Path:
    """The configured model directory; ConfigError naming the setting when it is missing or incomplete."""
    model_dir = config.backend.model_dir
    if model_dir is None:
        raise ConfigError(
            "no model directory: set ENRICH_MODEL_DIR / --model-dir to an exported model "
            "(`enrich train` then `enrich export`; `enrich demo` does both)"
        )
    needed = ["model_info.json", "labels.json", "tokenizer.json"]
    if config.backend.kind == "onnx":
        needed.append("model.onnx")  # Triton serves its own copy from its model repository
    missing = [n for n in needed if not (model_dir / n).is_file()]
    if missing:
        raise ConfigError(
            f"model directory {model_dir} lacks {', '.join(missing)}: set ENRICH_MODEL_DIR / --model-dir to "
            "an exported model (`enrich export`)"
        )
    return model_dir


def check_broker(config: WorkerConfig) -> dict[str, int]:
    """Start-up check: the broker answers within ENRICH_STARTUP_TIMEOUT_S and the topics exist (the review
    topic too when set);
    ServiceUnreachable / TopicMissing (exit codes 4 / 5) otherwise. Partitions per topic."""
    kafka = config.kafka
    topics = {
        kafka.input_topic: "ENRICH_INPUT_TOPIC / --input-topic",
        kafka.output_topic: "ENRICH_OUTPUT_TOPIC / --output-topic",
        kafka.dlq_topic: "ENRICH_DLQ_TOPIC / --dlq-topic",
    }
    if config.review.topic:
        topics[config.review.topic] = "ENRICH_REVIEW_TOPIC / --review-topic"
    return check_kafka(consumer_settings(kafka, config.worker_id), topics, timeout_s=config.startup_timeout_s)


async def wait_for_backend(
    worker: StreamWorker, config: WorkerConfig, timeout_s: float | None = None
) -> None:
    """Start-up check of the served model, by the backend itself (Triton: live, ready, config fits, the
    digest the model directory's; both: fixed label dimensions fit labels.json), then one probe inference
    whose output widths must be the label maps' sizes. A mismatch is a ModelMismatch (`enrich worker`
    exits with the configuration code and the message, never a crash loop of IndexErrors inside decode);
    ServiceUnreachable after `timeout_s` (ENRICH_STARTUP_TIMEOUT_S)."""
    serving, model = worker.serving, worker.model
    wait_s = config.startup_timeout_s if timeout_s is None else timeout_s
    deadline = time.monotonic() + wait_s
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
                raise ServiceUnreachable(
                    f"the inference backend was not ready within {wait_s:g} s ({exc}): check "
                    "ENRICH_TRITON_URL / --triton-url and ENRICH_TRITON_MODEL / --triton-model"
                ) from exc
            log.info("waiting for the inference backend: %s", exc)
            await asyncio.sleep(1.0)


async def run_worker(
    config: WorkerConfig, stop: asyncio.Event, *, metrics: WorkerMetrics | None = None
) -> None:
    """Check the broker's security settings, the broker and the topics, build a worker, serve its
    endpoints, and process until `stop` is set."""
    kafka = config.kafka
    if is_secured(kafka.properties):  # a refused credential or CA stops the start (KafkaSecurityError)
        answered = await asyncio.to_thread(check_kafka_security, kafka.bootstrap_servers, kafka.properties)
        if not answered:
            log.warning("Kafka at %s did not answer the start-up security check; going on",
                        kafka.bootstrap_servers)
    await asyncio.to_thread(check_broker, config)
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
