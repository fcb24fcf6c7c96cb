"""The enrichment job as a faust-streaming user writes it: an agent batching with `stream.take`.

    python -m devtools.bench.peers.faust_peer      (configured by the same ENRICH_* variables as the worker)

`stream.take(max_batch, within=max_wait)` is Faust's documented batching, with the worker's batch size
and wait; `concurrency=max_in_flight` runs that many copies of the agent, so up to as many batches are at
Triton at once, as in our worker. Faust acknowledges (and later commits) an event once the agent has
taken the next batch; `send` hands the record to its producer without waiting for the broker's ack.
"""

from __future__ import annotations

import tempfile

import faust
import orjson

from devtools.bench.peers.job import EnrichJob


def make_app(job: EnrichJob, data_dir: str) -> faust.App:
    kafka, batch = job.config.kafka, job.config.batch
    app = faust.App(
        kafka.group_id,  # Faust's app id is its consumer group
        broker=[f"kafka://{server}" for server in kafka.bootstrap_servers.split(",")],
        datadir=data_dir,
        store="memory://",
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        autodiscover=False,
    )
    listings = app.topic(kafka.input_topic, key_type=bytes, value_type=bytes, value_serializer="raw")
    attributes = app.topic(kafka.output_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                           value_serializer="raw")  # fmt: skip

    @app.agent(listings, concurrency=batch.max_in_flight)
    async def enrich(stream: faust.Stream) -> None:
        async for values in stream.take(batch.max_batch, within=batch.max_wait_ms / 1000):
            for key, event in await job.enrich([orjson.loads(value) for value in values]):
                await attributes.send(key=key, value=event)

    return app


def main() -> None:
    job = EnrichJob.from_env(worker_id="faust")
    app = make_app(job, tempfile.mkdtemp(prefix="faust-peer-"))
    faust.Worker(app, loglevel=job.config.log_level.lower()).execute_from_commandline()


if __name__ == "__main__":
    main()
