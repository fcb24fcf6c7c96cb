"""The Faust app: latest attribute event per listing (to a compacted topic) and listings per category.

Data flow: `listings.attributes` (keyed by listing_id) -> agent `track_latest` -> table `latest` +
compacted `listings.latest` + `<app_id>-category-deltas` (keyed by category) -> agent `count_categories`
-> table `category-counts`. The deltas go through their own topic so the counts table is partitioned by
category, as Faust tables must be partitioned by their key, whatever the number of input partitions.

A delta carries the input record it came from (partition, offset); the counts agent applies each at most
once per (category, input partition), in `category-applied`. Without that, a restart re-applied the deltas
whose offsets the stopped worker had not committed yet (Faust commits every few seconds, and a SIGTERM did
not always commit first): a count one too high after a plain rolling restart.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from faust.types import StreamT, TopicT

from views.credentials import broker_credentials
from views.rules import BadAttributeEvent, decide_update, parse_event

__all__ = ["TABLES", "ViewsApp", "category_counts_changelog", "make_app"]

log = logging.getLogger(__name__)

LATEST_TABLE = "latest"
CATEGORY_COUNTS_TABLE = "category-counts"
APPLIED_TABLE = "category-applied"
TABLES = (LATEST_TABLE, CATEGORY_COUNTS_TABLE, APPLIED_TABLE)


@dataclass
class ViewsApp:
    """The app and the handles tests and web views need."""

    app: faust.App
    latest: Any  # faust Table: listing_id -> the latest event (dict)
    category_counts: Any  # faust Table: category label -> number of listings
    latest_topic: TopicT
    rejected: list[str]  # why each bad input record was skipped (kept on the input topic, nothing lost)


def category_counts_changelog(app_id: str) -> str:
    """Name of the compacted changelog topic Faust keeps for the counts table (JSON key and value)."""
    return f"{app_id}-{CATEGORY_COUNTS_TABLE}-changelog"


def make_app(
    broker: str,
    *,
    app_id: str,
    input_topic: str = "listings.attributes",
    latest_topic: str = "listings.latest",
    data_dir: Path,
    partitions: int = 1,
    replication_factor: int = 1,
    processing_guarantee: str = "at_least_once",
    kafka_properties: Mapping[str, str] | None = None,
) -> ViewsApp:
    """Build the app. `broker` is a comma-separated bootstrap list; `partitions` must equal the input topic's
    (Faust creates the changelog, deltas and latest topics with it); the input topic must already exist.
    `kafka_properties`: the worker's librdkafka security properties (views/credentials.py translates them)."""
    app = faust.App(
        app_id,
        broker=[f"kafka://{server.strip()}" for server in broker.split(",") if server.strip()],
        datadir=str(data_dir),
        store="memory://",  # rebuilt from the changelog topics on start
        topic_partitions=partitions,
        topic_replication_factor=replication_factor,
        producer_acks=-1,
        web_enabled=False,
        autodiscover=False,
        table_standby_replicas=0,
        processing_guarantee=processing_guarantee,
        broker_credentials=broker_credentials(kafka_properties or {}),
    )
    source = app.topic(input_topic, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    latest_out = app.topic(latest_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                           value_serializer="raw", compacting=True, partitions=partitions, internal=True)
    # Values: {"delta": ±1, "partition": input partition, "offset": input offset} (JSON)
    deltas = app.topic(f"{app_id}-category-deltas", key_type=str, partitions=partitions, internal=True)
    # No value_type: value_type=dict breaks changelog recovery (Faust calls dict.from_data); JSON gives dicts.
    latest = app.Table(LATEST_TABLE, default=None, key_type=str)
    counts = app.Table(CATEGORY_COUNTS_TABLE, default=int, key_type=str, value_type=int)
    # "<category>@<input partition>" -> the last input offset applied to that category's count
    applied = app.Table(APPLIED_TABLE, default=lambda: -1, key_type=str, value_type=int)
    rejected: list[str] = []

    @app.agent(source)
    async def track_latest(stream: StreamT[bytes]) -> None:
        await latest_out.maybe_declare()  # not consumed here, so Faust would not create it by itself
        async for event in stream.events():
            message = event.message
            try:
                parsed = parse_event(event.value)
            except BadAttributeEvent as exc:
                where = f"{message.topic}[{message.partition}]@{message.offset}"
                rejected.append(f"{where}: {exc}")
                log.warning("skipping bad attribute event at %s: %s", where, exc)
                continue
            update = decide_update(latest.get(parsed.listing_id), parsed)
            if update is None:
                continue
            latest[parsed.listing_id] = parsed.document
            await latest_out.send(key=parsed.listing_id.encode(), value=event.value)
            for category, delta in update.category_deltas:
                await deltas.send(key=category, value={"delta": delta, "partition": message.partition,
                                                       "offset": message.offset})  # fmt: skip

    @app.agent(deltas)
    async def count_categories(stream: StreamT[dict[str, int]]) -> None:
        async for category, delta in stream.items():
            source = f"{category}@{delta['partition']}"
            if delta["offset"] <= applied[source]:
                continue  # applied before a restart: its offset was not committed yet
            counts[category] += delta["delta"]
            applied[source] = delta["offset"]  # after the count: a crash between them counts twice, never 0

    return ViewsApp(app, latest, counts, latest_out, rejected)
