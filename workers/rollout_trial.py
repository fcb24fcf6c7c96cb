"""`enrich rollout shadow|canary|promote|rollback|report`: try a candidate model next to the desired one.

`shadow` and `canary` check the candidate like `set` does (`resolve_model`: digest, probe inference) and
write the group's `CandidateModel` (key `candidate/<group>`) on the control topic; the workers follow it
(`workers.runtime.trial_follow`). `promote` is `set` of the candidate (same path, same checks and wait)
followed by the candidate record's tombstone; `rollback` writes only the tombstone. `report` reads the
shadow topic (`workers.runtime.shadow` documents its records) and prints the comparison per candidate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from workers.contract.errors import ConfigError
from workers.model.identity import short_digest
from workers.rollout import (
    RolloutTarget,
    called_versions,
    resolve_model,
    set_desired,
    triton_add,
    triton_unload_unused,
    wait_for_workers,
)
from workers.runtime.control import (
    CandidateModel,
    ControlRecord,
    ControlWriter,
    DesiredModel,
    candidate_key,
    default_setter,
    read_control,
    utc_now,
)
from workers.runtime.topic_range import read_whole_topic
from workers.stages.agreement import OUTCOMES, Tally, compare
from workers.stages.trial import CANARY, SHADOW

__all__ = ["Candidate", "promote", "report_lines", "rollback", "set_candidate", "tally_records"]


def set_candidate(
    target: RolloutTarget, mode: str, model_target: str, fraction: float, stale_s: float
) -> list[str]:
    """`enrich rollout shadow|canary`: returns the lines to print."""
    if mode not in (SHADOW, CANARY):
        raise ConfigError(f"unknown trial mode {mode!r}")
    if not 0 < fraction <= 1:
        raise ConfigError(f"--{'sample' if mode == SHADOW else 'share'} must be in (0, 1], got {fraction:g}")
    model_dir, model = resolve_model(model_target, target.store)
    lines = [f"model {model.short_digest} ({model.name} {model.version}) at {model_dir}: checked"]
    state = read_control(target.bootstrap, target.topic)
    desired = state.get(target.group)
    if isinstance(desired, DesiredModel) and desired.digest == model.digest:
        raise ConfigError(f"{model.short_digest} is already the desired model of group {target.group}")
    triton_version, _ = triton_add(target, state, model.digest, stale_s, lines)
    record = CandidateModel(
        group=target.group, mode=mode, fraction=fraction, digest=model.digest, model_dir=str(model_dir),
        name=model.name, version=model.version, triton_version=triton_version, set_at=utc_now(),
        set_by=target.set_by or default_setter(),
    )  # fmt: skip
    _write(target, record)
    what = f"runs on {fraction:.1%} of listings next to the active model" if mode == SHADOW else \
        f"serves {fraction:.1%} of listings"  # fmt: skip
    lines.append(f"group {target.group}: {mode} candidate {model.short_digest} {what}")
    return lines


def promote(target: RolloutTarget, *, wait_s: float, stale_s: float) -> list[str]:
    """`enrich rollout promote`: the candidate becomes the desired model (`set`), then is dropped."""
    candidate = _candidate(target)
    found = candidate.model_dir and Path(candidate.model_dir).is_dir()
    where = candidate.model_dir if found else candidate.digest
    lines = set_desired(target, where, wait_s=wait_s, stale_s=stale_s, drop_candidate=True)
    return [*lines, f"group {target.group}: {candidate.mode} candidate promoted; no candidate now"]


def rollback(target: RolloutTarget, *, wait_s: float = 0.0, stale_s: float = 120.0) -> list[str]:
    """`enrich rollout rollback`: drop the candidate; the workers keep (or go back to) the desired model.
    Triton backend with `wait_s`: once no live worker tries the candidate any more (a worker reports the
    trial dropped only after the candidate's last batch), unload its version unless the group calls it."""
    state = read_control(target.bootstrap, target.topic)
    candidate = _candidate(target, state)
    loaded = called_versions(state, target.group, stale_s)
    writer = ControlWriter(target.bootstrap, target.topic)
    try:
        writer.delete(candidate_key(target.group))
        writer.flush()
    finally:
        writer.close()
    short = short_digest(candidate.digest)
    lines = [f"group {target.group}: {candidate.mode} candidate {short} dropped; "
             "the workers serve only the desired model"]  # fmt: skip
    if not (target.triton_url and candidate.triton_version):
        return lines
    _, trying = wait_for_workers(target, wait_s, stale_s, lambda r: short in r.trial) if wait_s > 0 \
        else ([], ["(not waited for: --wait 0)"])  # fmt: skip
    if trying:
        lines.append(f"still trying the candidate: {', '.join(trying)}; Triton version "
                     f"{candidate.triton_version} kept")  # fmt: skip
        return lines
    triton_unload_unused(target, loaded, stale_s, lines)
    return lines


def _candidate(target: RolloutTarget, state: dict[str, ControlRecord] | None = None) -> CandidateModel:
    state = read_control(target.bootstrap, target.topic) if state is None else state
    record = state.get(candidate_key(target.group))
    if not isinstance(record, CandidateModel):
        raise ConfigError(f"group {target.group} has no shadow or canary candidate (`enrich rollout status`)")
    return record


def _write(target: RolloutTarget, record: CandidateModel) -> None:
    writer = ControlWriter(target.bootstrap, target.topic)
    try:
        writer.send(record)
        writer.flush()
    finally:
        writer.close()


# ---- report ------------------------------------------------------------------------------------------------


@dataclass
class Candidate:
    """The comparisons of one candidate digest (and the active models it was compared with)."""

    model: dict[str, str]
    active_models: set[str] = field(default_factory=set)
    tally: Tally = field(default_factory=Tally)
    examples: list[dict[str, Any]] = field(default_factory=list)


def tally_records(
    records: Iterable[dict[str, Any]], group: str | None, examples: int
) -> dict[str, Candidate]:
    """Per candidate digest: the last comparison of each (listing_id, listing_version), added up."""
    latest: dict[tuple[str, str, int], dict[str, Any]] = {}
    for record in records:
        if group is not None and record.get("group") != group:
            continue
        digest = record["candidate"]["model"]["digest"]
        latest[(digest, record["listing_id"], record["listing_version"])] = record
    candidates: dict[str, Candidate] = {}
    for (digest, _, _), record in latest.items():
        active, theirs = record["active"], record["candidate"]
        entry = candidates.setdefault(digest, Candidate(theirs["model"]))
        entry.active_models.add(active["model"]["digest"])
        comparison = compare(active["category"], active["attributes"], theirs["category"],
                             theirs["attributes"])  # fmt: skip
        entry.tally.add(comparison)
        entry.tally.active.add(float(active["category"].get("confidence", 0.0)), active.get("latency_ms"))
        entry.tally.candidate.add(float(theirs["category"].get("confidence", 0.0)), theirs.get("latency_ms"))
        if not comparison.agrees and len(entry.examples) < examples:
            entry.examples.append(record)
    return candidates


def report_lines(bootstrap: str, shadow_topic: str, group: str | None, examples: int = 5,
                 timeout_s: float = 30.0) -> list[str]:  # fmt: skip
    """`enrich rollout report`: the comparison table of each candidate found in the shadow topic."""
    missing = f"shadow topic {shadow_topic!r} not found: set --shadow-topic / ENRICH_SHADOW_TOPIC"
    records = (orjson.loads(m.value()) for m in read_whole_topic(
        bootstrap, shadow_topic, "rollout report read", missing, timeout_s) if m.value())  # fmt: skip
    candidates = tally_records(records, group, examples)
    if not candidates:
        return [f"{shadow_topic}: no shadow comparisons" + (f" for group {group}" if group else "")]
    lines: list[str] = []
    for digest, entry in candidates.items():
        lines.extend(_table(digest, entry))
    return lines


def _pct(part: float) -> str:
    return f"{part:7.1%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _table(digest: str, entry: Candidate) -> list[str]:
    tally, model = entry.tally, entry.model
    actives = ", ".join(short_digest(d) for d in sorted(entry.active_models))
    a, c = tally.active, tally.candidate
    lines = [
        f"candidate {short_digest(digest)} ({model.get('name')} {model.get('version')}) vs active {actives}",
        f"  listings compared    {tally.listings}",
        f"  category agreement   {tally.category_rate():.1%} ({tally.category_agree} of {tally.listings})",
        f"  mean confidence      active {a.confidence_sum / tally.listings:.3f}   "
        f"candidate {c.confidence_sum / tally.listings:.3f}   (category)",
        f"  latency per batch    active {_ms(a.mean_latency_ms())} ({a.inferred} inferred, "
        f"{tally.listings - a.inferred} cache hits)   candidate {_ms(c.mean_latency_ms())}",
        f"  {'attribute':<24} {'agree':>7} {'equal':>7} {'differ':>7} {'only-act':>8} {'only-cand':>9}",
    ]  # fmt: skip
    for name in sorted(tally.attributes):
        counts = tally.attributes[name]
        lines.append(f"  {name[:24]:<24} {_pct(tally.attribute_rate(name))} "
                     + " ".join(f"{counts[o]:>{w}}" for o, w in zip(OUTCOMES, (7, 7, 8, 9), strict=True)))
    if entry.examples:
        lines.append("  where they differ (active | candidate):")
    for record in entry.examples:
        lines.append(f"    {record['listing_id']} {record['title'][:60]!r}")
        active, theirs = record["active"], record["candidate"]
        if active["category"].get("label") != theirs["category"].get("label"):
            labels = active["category"].get("label"), theirs["category"].get("label")
            lines.append(f"      category: {labels[0]} | {labels[1]}")
        for name, outcome in record["agreement"]["attributes"].items():
            if outcome != "equal":
                lines.append(f"      {name}: {_values(active, name)} | {_values(theirs, name)}")
    return lines


def _values(side: dict[str, Any], name: str) -> str:
    return ", ".join(str(a["value"]) for a in side["attributes"] if a["name"] == name) or "-"
