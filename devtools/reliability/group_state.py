"""A consumer group's state as the chaos harness waits on it, read with aiokafka's admin client.

Not librdkafka's: its `describe_consumer_groups` aborts the whole process (`rd_kafka_enq_once_del_source_
return: Assertion eonce->refcnt > 0`, librdkafka issue #4605, still open in 2.16) when the coordinator's
broker dies mid-request, which is what the takeover scenarios do. One client, on its own event loop thread,
lives for the whole wait: a fresh client per poll (tried in a child process) never saw the group settle
when the killed broker was the coordinator."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

__all__ = ["GroupState", "GroupWatcher", "aiokafka_security", "wait_until_settled"]


@dataclass(frozen=True)
class GroupState:
    state: str  # the broker's words: "Stable", "PreparingRebalance", "CompletingRebalance", "Empty", "Dead"
    partitions_per_member: tuple[int, ...]

    def settled_with(self, members: int) -> bool:
        """Stable, `members` members, each with partitions assigned."""
        return (self.state == "Stable" and len(self.partitions_per_member) == members
                and all(self.partitions_per_member))  # fmt: skip


def aiokafka_security(properties: Mapping[str, str]) -> dict[str, object]:
    """The librdkafka security properties the stack gives its clients, as aiokafka keyword arguments."""
    protocol = properties.get("security.protocol", "PLAINTEXT").upper()
    kwargs: dict[str, object] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        from views.credentials import ssl_context  # imports faust: only for a secured stack

        kwargs["ssl_context"] = ssl_context(properties)
    if protocol.startswith("SASL"):
        kwargs |= {"sasl_mechanism": properties.get("sasl.mechanism", "PLAIN").upper(),
                   "sasl_plain_username": properties.get("sasl.username"),
                   "sasl_plain_password": properties.get("sasl.password")}  # fmt: skip
    return kwargs


class GroupWatcher:
    """`describe(group)` from any thread; `close()` when done."""

    def __init__(self, bootstrap_servers: str, properties: Mapping[str, str] | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="group-watcher", daemon=True)
        self._thread.start()
        self._admin: AIOKafkaAdminClient | None = None
        self._settings = {"bootstrap_servers": bootstrap_servers, "request_timeout_ms": 5000,
                          **aiokafka_security(properties or {})}  # fmt: skip

    def _run(self, coroutine, timeout_s: float):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    async def _start(self) -> AIOKafkaAdminClient:
        admin = AIOKafkaAdminClient(**self._settings)  # aiokafka binds its client to the running loop
        await admin.start()
        return admin

    def describe(self, group: str, timeout_s: float = 10.0) -> GroupState:
        """The group's state now; raises while its coordinator cannot be reached."""
        if self._admin is None:
            self._admin = self._run(self._start(), timeout_s)
        (response,) = self._run(self._admin.describe_consumer_groups([group]), timeout_s)
        error_code, _group_id, state, _protocol_type, _protocol, members = response.groups[0][:6]
        if error_code:
            raise RuntimeError(f"DescribeGroups error code {error_code} for {group}")
        partitions = tuple(len(ConsumerProtocolMemberAssignment.decode(member[-1]).partitions())
                           if member[-1] else 0 for member in members)  # fmt: skip
        return GroupState(state, partitions)

    def close(self) -> None:
        try:
            if self._admin is not None:
                self._run(self._admin.close(), 10.0)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()


def _pause() -> bool:
    time.sleep(0.25)
    return True


def wait_until_settled(bootstrap_servers: str, group: str, members: int, timeout_s: float, *,
                       properties: Mapping[str, str] | None = None,
                       between: Callable[[], bool] | None = None) -> bool:  # fmt: skip
    """Whether `group` became stable with `members` members, each with partitions, within `timeout_s`.
    `between()` runs between reads (default: a 0.25 s sleep); it returns False to stop waiting early."""
    watcher = GroupWatcher(bootstrap_servers, properties)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if watcher.describe(group, timeout_s=10).settled_with(members):
                    return True
            except Exception:  # coordinator moving (a broker was killed) or not yet knowing the group
                pass
            if not (between or _pause)():
                return False
        return False
    finally:
        watcher.close()
