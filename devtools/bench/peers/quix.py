"""The enrichment job as a Quix Streams 3 user writes it: an Application and a StreamingDataFrame.

    python -m devtools.bench.peers.quix      (configured by the same ENRICH_* variables as `enrich worker`)

Quix processes one message at a time through the dataframe, synchronously, and its only batching is a
count window (`tumbling_count_window(n).agg(Collect())`), which groups by message key: our keys are
listing ids, so a window would never fill without a `group_by` onto one key (every message produced
once more through a repartition topic), and a partial last window never closes (the tail would wait
forever for its 32nd message). So the idiomatic job is one Triton call per listing; Quix scales by
running more replicas in the consumer group, which the bench does not do for any contestant.
"""

from __future__ import annotations

import os

from quixstreams import Application

from devtools.bench.peers.job import EnrichJob


def main() -> None:
    job = EnrichJob.from_env(worker_id="quix")
    kafka = job.config.kafka
    app = Application(
        broker_address=kafka.bootstrap_servers,
        consumer_group=kafka.group_id,
        auto_offset_reset="earliest",
        loglevel=os.environ.get("ENRICH_LOG_LEVEL", "WARNING"),
        # Quix's defaults (at-least-once, 5 s checkpoints, topics checked on start) are kept.
    )
    listings = app.topic(kafka.input_topic, key_deserializer="bytes", value_deserializer="json")
    attributes = app.topic(kafka.output_topic, key_serializer="bytes", value_serializer="bytes")
    sdf = app.dataframe(listings)
    sdf = sdf.apply(lambda listing: job.enrich_blocking([listing])[0][1])
    sdf.to_topic(attributes)  # the key stays the input's: the listing id
    app.run()


if __name__ == "__main__":
    main()
