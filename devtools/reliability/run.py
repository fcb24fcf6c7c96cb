"""One scenario run: its topics, the producer of its traffic, the worker under test and the ledger.

A worker that exits without being told to is counted as a death and restarted (as a supervisor would),
so a crash loop shows up in the figures instead of hanging the run. A scenario records every fault that
may re-deliver (`Run.fault` ... `Run.fault_over`, `Run.crash_worker`); each allows one in-flight window of
duplicates (`InFlightWindow`), none at all where the ledger reads read_committed (exactly-once).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devtools.harness.listings import Record
from devtools.harness.producer import PacedProducer
from devtools.harness.stack import LocalStack
from devtools.harness.worker_process import WorkerProcess
from devtools.reliability.ledger import Fault, InFlightWindow, Ledger, Tally
from devtools.services.kafka import KafkaCluster
from devtools.services.redis_server import RedisServer
from devtools.services.triton import TritonServer

__all__ = ["MAX_RESTARTS_AFTER_DEATH", "Run", "ScenarioResult", "Services", "services_for"]

MAX_RESTARTS_AFTER_DEATH = 5
INPUT_PARTITIONS = 3


@dataclass
class Services:
    """What a scenario runs against; the scenario may stop and restart any of them."""

    kafka: KafkaCluster
    redis: RedisServer
    model_dir: Path
    run_dir: Path
    triton: TritonServer | None = None
    other_model_dir: Path | None = None  # model-swap's model B (else trained into run_dir)


def services_for(stack: LocalStack, scenario: str, model_dir: Path) -> Services:
    """The services of one scenario from the stack shared by a whole `enrich chaos` command: the three-node
    cluster only for broker-failover and exactly-once-failover, Triton only for triton-outage and slow-triton
    (each started on first use)."""
    kafka = stack.kafka_cluster(3 if scenario in ("broker-failover", "exactly-once-failover") else 1)
    triton = stack.triton if scenario in ("triton-outage", "slow-triton") else None
    return Services(kafka, stack.redis, model_dir, stack.base_dir, triton)


@dataclass
class ScenarioResult:
    scenario: str
    tally: Tally
    recovery_s: list[float]
    deaths: int
    peak_rss_bytes: int
    seconds: float
    complete: bool
    details: dict[str, object] = field(default_factory=dict)
    produce_errors: list[str] = field(default_factory=list)
    # What bounds the duplicates: the worker's window (None: read_committed, exactly-once, so none may
    # show), the spans of faults that may re-deliver, the broker's append time of every attribute event.
    window: InFlightWindow | None = None
    faults: list[Fault] = field(default_factory=list)
    output_times: list[float] = field(default_factory=list, repr=False)
    checks: dict[str, bool] = field(default_factory=dict)  # a scenario's own: problem -> whether it failed

    @property
    def in_flight_windows(self) -> list[int]:
        """What each fault may re-deliver at most."""
        return [] if self.window is None else self.window.per_fault(self.faults, self.output_times)

    @property
    def duplicate_bound(self) -> int:
        return sum(self.in_flight_windows)

    def problems(self) -> list[str]:
        """What makes this run a failure (empty: it passed): anything lost, duplicates beyond the bound,
        outputs or DLQ records for no produced input, wrong outcomes, failed produces, not complete, and
        any failed check of the scenario's own (`checks`)."""
        tally, bound, errors = self.tally, self.duplicate_bound, self.produce_errors
        checks = {
            f"{tally.lost} lost": tally.lost > 0,
            f"{tally.duplicates} duplicates > bound {bound}": tally.duplicates > bound,
            f"{tally.unknown} unknown records": tally.unknown > 0,
            f"{tally.wrong_outcome} wrong outcomes": tally.wrong_outcome > 0,
            f"{tally.produce_failed} failed produces, {len(errors)} producer errors": bool(
                tally.produce_failed or errors
            ),
            "incomplete": not self.complete,
            **self.checks,
        }  # fmt: skip
        return [problem for problem, failed in checks.items() if failed]

    @property
    def max_recovery_s(self) -> float | None:
        return max(self.recovery_s) if self.recovery_s else None


class Run:
    """Topics (input: 3 partitions; output: LogAppendTime, so append times are the broker's clock)."""

    def __init__(self, services: Services, name: str, *, worker_env: Mapping[str, str],
                 input_topic_config: Mapping[str, str] | None = None,
                 read_committed: bool = False) -> None:  # fmt: skip
        self.services = services
        self.name = name
        suffix = uuid.uuid4().hex[:8]
        self.input_topic, self.output_topic, self.dlq_topic = (
            f"chaos-{name}-{suffix}.{kind}" for kind in ("in", "out", "dlq")
        )
        kafka = services.kafka
        kafka.create_topic(self.input_topic, INPUT_PARTITIONS, config=input_topic_config)
        kafka.create_topic(self.output_topic, 1, config={"message.timestamp.type": "LogAppendTime"})
        kafka.create_topic(self.dlq_topic, 1)
        self.ledger = Ledger(kafka.bootstrap_servers, self.input_topic, self.output_topic, self.dlq_topic,
                             read_committed=read_committed)  # fmt: skip
        env = {
            "HF_HUB_OFFLINE": "1", "ENRICH_KAFKA_BOOTSTRAP": kafka.bootstrap_servers,
            "ENRICH_MODEL_DIR": str(services.model_dir), "ENRICH_GROUP_ID": f"chaos-{name}-{suffix}",
            "ENRICH_INPUT_TOPIC": self.input_topic, "ENRICH_OUTPUT_TOPIC": self.output_topic,
            "ENRICH_DLQ_TOPIC": self.dlq_topic, "ENRICH_REDIS_URL": services.redis.url,
            "ENRICH_METRICS_PORT": "-1", "ENRICH_LOG_LEVEL": "WARNING", "ENRICH_WORKER_ID": f"chaos-{name}",
            **worker_env,
        }  # fmt: skip
        self.worker = WorkerProcess(env, services.run_dir / f"worker-{name}-{suffix}.log")
        self.window = InFlightWindow.of_worker(env)
        self.read_committed = read_committed
        self.faults: list[Fault] = []  # wall-clock spans of faults that may re-deliver
        self._fault_start: float | None = None
        self.producer: PacedProducer | None = None
        self.deaths = 0
        self.recovery_s: list[float] = []
        self.started = time.monotonic()

    # ---- traffic and progress --------------------------------------------------------------------------

    def produce(self, records: Iterable[Record], rate: float) -> PacedProducer:
        self.producer = PacedProducer(self.services.kafka.bootstrap_servers, self.input_topic, records, rate)
        return self.producer.start()

    def fault(self) -> float:
        """Record, just before injecting it, the start of a fault that may re-deliver (it allows one
        in-flight window); `fault_over` (or the end of the run) ends it. Returns the moment (wall clock)."""
        self.fault_over()
        self._fault_start = time.time()
        return self._fault_start

    def fault_over(self) -> None:
        """The fault is over: from now on the worker can commit what it finishes again."""
        if self._fault_start is not None:
            self.faults.append((self._fault_start, time.time()))
            self._fault_start = None

    def crash_worker(self) -> None:
        """kill -9 (no drain, no commit: a fault over at once) and start a new worker, as a supervisor
        would."""
        self.fault()
        self.worker.kill()
        self.fault_over()
        self.worker.start()

    def step(self, seconds: float) -> None:
        """Read the topics for `seconds`, restarting the worker if it died on its own."""
        self.ledger.poll(seconds)
        if self.worker.died():
            self.deaths += 1
            code = self.worker.terminate()
            if self.deaths <= MAX_RESTARTS_AFTER_DEATH:
                print(f"  [{self.name}] worker died (exit {code}); restarting", flush=True)
                self.worker.start()

    def wait_for_accounted(self, count: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.gave_up:
            self.step(0.5)
            if self._accounted() >= count:
                return True
        return False

    @property
    def gave_up(self) -> bool:
        """The worker kept dying (a crash loop): waiting longer shows nothing new."""
        return self.deaths > MAX_RESTARTS_AFTER_DEATH

    def all_accounted(self) -> bool:
        producer = self.producer
        return producer is not None and producer.done and self._accounted() >= len(producer.snapshot())

    def _accounted(self) -> int:
        return self.ledger.accounted(self.producer.snapshot()) if self.producer is not None else 0

    def wait_for_output_after(self, moment: float, timeout_s: float) -> float | None:
        """Seconds from `moment` (wall clock) until the broker appended an attribute event; recorded."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.gave_up:
            first = self.ledger.first_output_after(moment)
            if first is not None:
                self.recovery_s.append(max(0.0, first - moment))
                return self.recovery_s[-1]
            self.step(0.25)
        return None

    # ---- the end ---------------------------------------------------------------------------------------

    def finish(self, timeout_s: float, **details: object) -> ScenarioResult:
        """Wait until every produced record has an outcome (or the timeout), stop the worker cleanly
        (SIGTERM: drain + commit), read both topics to the end and tally."""
        producer = self.producer
        if producer is None:
            raise RuntimeError("nothing produced")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.all_accounted() and not self.gave_up:
            self.step(0.5)
        complete = self.all_accounted()
        self.fault_over()
        exit_code = self.worker.terminate()
        self.ledger.read_to_end()
        tally = self.ledger.tally(producer.snapshot(), produce_failed=len(producer.failed))
        return ScenarioResult(
            scenario=self.name, tally=tally, recovery_s=self.recovery_s, deaths=self.deaths,
            peak_rss_bytes=self.worker.peak_rss_bytes, seconds=time.monotonic() - self.started,
            complete=complete,
            details={"final_exit_code": exit_code, **details, "cache_hits": self.ledger.cache_hits,
                     "worker_log": str(self.worker.log_path)},
            produce_errors=list(producer.errors), window=None if self.read_committed else self.window,
            faults=list(self.faults), output_times=list(self.ledger.output_times),
        )  # fmt: skip

    def close(self) -> None:
        self.worker.close()
        self.ledger.close()
