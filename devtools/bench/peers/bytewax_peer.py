"""The enrichment job as a Bytewax 0.21 user writes it: a Dataflow batching with `op.collect`.

    python -m devtools.bench.peers.bytewax_peer      (configured by the same ENRICH_* variables as the worker)

`collect` (up to `max_batch` items or `max_wait`, whichever first) is Bytewax's batching operator; it
works on a keyed stream, so the listings are keyed by their input partition. Bytewax's parallelism is
its workers (threads of one process here, `-w` in `python -m bytewax.run`): `max_in_flight` workers
take the input partitions between them and each sends its own batches, so up to as many batches are at
Triton at once, as in our worker. No recovery store is configured (Bytewax's default): the Kafka source
keeps its offsets only in memory, so this peer does no commit work at all.
"""

from __future__ import annotations

from datetime import timedelta

import bytewax.operators as op
import orjson
from bytewax._bytewax import cli_main
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow

from devtools.bench.peers.job import EnrichJob

Batch = tuple[str, list[KafkaSourceMessage[bytes | None, bytes | None]]]


def make_flow(job: EnrichJob) -> Dataflow:
    kafka, batch = job.config.kafka, job.config.batch
    brokers = kafka.bootstrap_servers.split(",")

    def enrich(keyed_batch: Batch) -> list[KafkaSinkMessage[bytes, bytes]]:
        listings = [orjson.loads(msg.value) for msg in keyed_batch[1] if msg.value is not None]
        return [KafkaSinkMessage(key, event) for key, event in job.enrich_blocking(listings)]

    flow = Dataflow("enrich")
    consumed = kop.input("listings", flow, brokers=brokers, topics=[kafka.input_topic])
    keyed = op.key_on("by_partition", consumed.oks, lambda msg: str(msg.partition))
    batches = op.collect("batch", keyed, timeout=timedelta(milliseconds=batch.max_wait_ms),
                         max_size=batch.max_batch)  # fmt: skip
    events = op.flat_map("enrich", batches, enrich)
    kop.output("attributes", events, brokers=brokers, topic=kafka.output_topic)
    return flow


def main() -> None:
    job = EnrichJob.from_env(worker_id="bytewax")
    cli_main(make_flow(job), workers_per_process=job.config.batch.max_in_flight)


if __name__ == "__main__":
    main()
