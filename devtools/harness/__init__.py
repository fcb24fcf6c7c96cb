"""The harness kit shared by the demo, the bench and the reliability suite, one implementation of each:

- `titles`: the fixture offers' titles (distinct or one per offer, stated by the caller),
- `listings`: listing v1 records (one builder; the demo's and chaos's presets; the invalid samples),
- `producer`: producing a batch with acknowledgements, and the `PacedProducer` thread,
- `reader`: reading events back (`read_events`, the bench's `OutputCollector`),
- `worker_process`: `enrich worker` subprocesses (`WorkerProcess`, `WorkerPool`),
- `stack`: the local service stack (`LocalStack`: Kafka, Redis, Triton, each started on first use).

Nothing is imported here: `devtools.paths` reads `offers.jsonl` as this package's data on every `enrich`
start, which must stay fast.
"""

__all__: list[str] = []
