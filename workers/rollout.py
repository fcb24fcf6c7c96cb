"""`enrich rollout set` and `enrich rollout status`: the desired model per consumer group, on the control
topic (`workers.runtime.control`), and what each worker runs. Shadow, canary, promote, rollback and report:
`workers.rollout_trial`.

`set` checks the model before any worker sees it (its digest matches its files; with model.onnx, one probe
inference whose output widths must fit labels.json), makes Triton load the new version next to the ones it
serves (Triton backend), writes the desired record, then (``--wait``) waits until every live worker of the
group reports the new digest and has Triton unload the versions no worker calls any more.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from workers.backends import OnnxRuntimeBackend
from workers.contract.errors import BackendUnavailable, ConfigError
from workers.model.identity import short_digest
from workers.model.served import ServedModel, find_model_dir
from workers.runtime.control import (
    CandidateModel,
    ControlRecord,
    ControlWriter,
    DesiredModel,
    WorkerReport,
    candidate_key,
    default_setter,
    read_control,
    utc_now,
)
from workers.runtime.model_swap import check_serving
from workers.triton_policy import write_version_policy

__all__ = [
    "RolloutTarget", "called_versions", "live_reports", "resolve_model", "set_desired", "status_lines",
    "triton_add", "triton_load", "triton_unload_unused", "wait_for_workers",
]  # fmt: skip

_TRITON_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RolloutTarget:
    bootstrap: str
    topic: str
    group: str
    store: Path | None = None
    triton_url: str = ""  # set: the group runs on Triton
    triton_model: str = "attribute_extractor"
    triton_repo: Path | None = None
    set_by: str = ""


def resolve_model(target: str, store: Path | None) -> tuple[Path, ServedModel]:
    """A model directory, or a digest (or its prefix) looked up in the store; loaded and probed."""
    model_dir = Path(target) if Path(target).is_dir() else find_model_dir(target, None, store)
    model = ServedModel.load(model_dir)  # ModelMismatch when the files contradict the recorded digest
    onnx = model_dir / "model.onnx"
    if onnx.is_file():
        async def probe() -> None:
            backend = OnnxRuntimeBackend(onnx)
            try:
                await check_serving(model, backend, max_batch=1, where=f"{model_dir}/model.onnx")
            finally:
                await backend.close()

        asyncio.run(probe())
    return model_dir.resolve(), model


def triton_version_of(repo: Path, model_name: str, digest: str) -> str:
    """The version directory of `model_name` in the Triton repository `repo` that holds `digest`."""
    found = [
        d.name for d in (repo / model_name).iterdir()
        if d.name.isdigit() and (d / "model.onnx").is_file() and _digest_in(d) == digest
    ]  # fmt: skip
    if not found:
        raise ConfigError(f"no version of {model_name} in {repo} holds {short_digest(digest)}: export the "
                          "model into the repository first (`enrich export`)")  # fmt: skip
    return max(found, key=int)


def _digest_in(version_dir: Path) -> str:
    try:
        return str(json.loads((version_dir / "model_info.json").read_text()).get("digest", ""))
    except (OSError, ValueError):
        return ""


def triton_load(target: RolloutTarget, versions: set[str]) -> list[str]:
    """Have Triton serve exactly `versions` of the model (explicit model control): the repository's
    config.pbtxt (its digest parameters included) with a `specific` version policy, as a load override.
    Loading keeps a version that stays in the set serving throughout; it returns once all are ready. Then
    the same policy goes into config.pbtxt (`workers.triton_policy`): the override lives only in the
    running server, and a restarted Triton would load just the newest version. Returns the lines to print
    about that file (none when written as usual)."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import InferenceServerClient, model_config_pb2
    from tritonclient.utils import InferenceServerException

    assert target.triton_repo is not None
    config_path = target.triton_repo / target.triton_model / "config.pbtxt"
    config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
    config.version_policy.specific.versions[:] = sorted(int(v) for v in versions)
    client = InferenceServerClient(target.triton_url)
    try:
        client.load_model(target.triton_model, config=json_format.MessageToJson(config),
                          client_timeout=_TRITON_TIMEOUT_S)  # fmt: skip
        for version in versions:
            if not client.is_model_ready(target.triton_model, version):
                raise BackendUnavailable(f"Triton did not make {target.triton_model} version {version} ready")
    except InferenceServerException as exc:
        raise BackendUnavailable(f"Triton at {target.triton_url}: {exc.message()}") from exc
    finally:
        client.close()
    return write_version_policy(config_path, (int(v) for v in versions))


def live_reports(state: dict[str, ControlRecord], group: str, stale_s: float) -> list[WorkerReport]:
    """The group's worker reports newer than `stale_s` (older ones: workers that stopped)."""
    now = datetime.now(UTC)
    return [
        r for r in state.values()
        if isinstance(r, WorkerReport) and r.group == group and _age_s(r.reported_at, now) <= stale_s
    ]  # fmt: skip


def _age_s(stamp: str, now: datetime) -> float:
    try:
        return (now - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()
    except ValueError:
        return float("inf")


def called_versions(state: dict[str, ControlRecord], group: str, stale_s: float) -> set[str]:
    """The Triton versions the group may call: those its live workers run, its desired model's and its
    candidate's (workers not yet on them will be)."""
    versions = {r.triton_version for r in live_reports(state, group, stale_s)}
    for key in (group, candidate_key(group)):
        record = state.get(key)
        if isinstance(record, DesiredModel | CandidateModel):
            versions.add(record.triton_version)
    return versions - {""}


def wait_for_workers(
    target: RolloutTarget, wait_s: float, stale_s: float, behind: Callable[[WorkerReport], bool]
) -> tuple[list[WorkerReport], list[str]]:
    """Read the group's reports until no live worker is `behind` or `wait_s` passed: (the live reports,
    the ids of the workers still behind)."""
    deadline = time.monotonic() + wait_s
    while True:
        reports = live_reports(read_control(target.bootstrap, target.topic), target.group, stale_s)
        lagging = sorted(r.worker_id for r in reports if behind(r))
        if not lagging or time.monotonic() > deadline:
            return reports, lagging
        time.sleep(0.5)


def triton_add(
    target: RolloutTarget, state: dict[str, ControlRecord], digest: str, stale_s: float, lines: list[str]
) -> tuple[str, set[str]]:
    """Triton backend: load the version holding `digest` next to every version the group's workers call
    (desired, running, candidate); (that version, the others). ("", set()) for ONNX."""
    if not target.triton_url:
        return "", set()
    if target.triton_repo is None:
        raise ConfigError("the Triton backend needs --triton-repo (the repository Triton serves)")
    triton_version = triton_version_of(target.triton_repo, target.triton_model, digest)
    running_versions = called_versions(state, target.group, stale_s)
    notes = triton_load(target, running_versions | {triton_version})
    lines.append(f"Triton serves {target.triton_model} versions "
                 f"{sorted(running_versions | {triton_version}, key=int)}")  # fmt: skip
    lines.extend(notes)
    return triton_version, running_versions


def set_desired(
    target: RolloutTarget, model_target: str, *, wait_s: float, stale_s: float, drop_candidate: bool = False
) -> list[str]:
    """`enrich rollout set` (and `promote`, which also drops the candidate once the desired record is
    written): returns the lines to print."""
    model_dir, model = resolve_model(model_target, target.store)
    lines = [f"model {model.short_digest} ({model.name} {model.version}) at {model_dir}: checked"]
    state = read_control(target.bootstrap, target.topic)
    triton_version, running_versions = triton_add(target, state, model.digest, stale_s, lines)
    desired = DesiredModel(
        group=target.group, digest=model.digest, model_dir=str(model_dir), name=model.name,
        version=model.version, triton_version=triton_version, set_at=utc_now(),
        set_by=target.set_by or default_setter(),
    )  # fmt: skip
    writer = ControlWriter(target.bootstrap, target.topic)
    try:
        writer.send(desired)
        if drop_candidate:  # after the desired record: a canary's listings never go back to the old model
            writer.delete(candidate_key(target.group))
        writer.flush()
    finally:
        writer.close()
    lines.append(f"group {target.group}: desired model is now {model.short_digest}")
    if wait_s <= 0:
        return lines
    reports, behind = wait_for_workers(target, wait_s, stale_s, lambda r: r.digest != model.digest)
    if behind:
        lines.append(f"still on another model after {wait_s:.0f}s: {', '.join(behind)} "
                     "(see `enrich rollout status`); old Triton versions kept")  # fmt: skip
        return lines
    lines.append(f"all {len(reports)} live workers run {model.short_digest}")
    if target.triton_url:
        triton_unload_unused(target, running_versions | {triton_version}, stale_s, lines)
    return lines


def triton_unload_unused(target: RolloutTarget, loaded: set[str], stale_s: float, lines: list[str]) -> None:
    """Have Triton serve only the versions of `loaded` the group still calls (`called_versions`, read now:
    a shadow or canary candidate set meanwhile keeps its version). Keeps everything when no version is
    known to be called: loading an empty set would unload the model."""
    needed = called_versions(read_control(target.bootstrap, target.topic), target.group, stale_s)
    unused = loaded - needed
    if not unused:
        return
    if not needed:
        lines.append(f"no worker reports a Triton version: versions {sorted(loaded, key=int)} kept")
        return
    notes = triton_load(target, needed)
    lines.append(f"Triton unloaded versions {sorted(unused, key=int)}")
    lines.extend(notes)


def status_lines(bootstrap: str, topic: str, group: str | None, stale_s: float) -> list[str]:
    """`enrich rollout status`: desired vs running, per group and worker."""
    state = read_control(bootstrap, topic)
    groups = sorted({r.group for r in state.values()} if group is None else {group})
    if not groups:
        return [f"{topic}: no rollout set and no worker reports yet"]
    lines: list[str] = []
    now = datetime.now(UTC)
    for name in groups:
        desired = state.get(name)
        if isinstance(desired, DesiredModel):
            lines.append(f"group {name}: desired {short_digest(desired.digest)} {desired.name} "
                         f"{desired.version} (set {desired.set_at} by {desired.set_by})")  # fmt: skip
        else:
            lines.append(f"group {name}: no desired model set (workers run their ENRICH_MODEL_DIR)")
        candidate = state.get(candidate_key(name))
        if isinstance(candidate, CandidateModel):
            share = "sample" if candidate.mode == "shadow" else "share"
            lines.append(f"  candidate: {candidate.mode} {short_digest(candidate.digest)} {candidate.name} "
                         f"{candidate.version}, {share} {candidate.fraction:.1%} (set {candidate.set_at} by "
                         f"{candidate.set_by})")  # fmt: skip
        lines.append(f"  {'worker':<28} {'running':<20} {'since':<25} swaps failed state")
        for r in sorted((r for r in state.values() if isinstance(r, WorkerReport) and r.group == name),
                        key=lambda r: r.worker_id):  # fmt: skip
            age = _age_s(r.reported_at, now)
            state_text = "gone?" if age > stale_s else (
                "on desired" if isinstance(desired, DesiredModel) and r.digest == desired.digest
                else "behind" if isinstance(desired, DesiredModel) else "running")  # fmt: skip
            if r.last_error:
                state_text += f" (last swap failed: {r.last_error[:80]})"
            if r.trial or r.trial_error:
                state_text += f"; trial: {r.trial or 'none'}" + (f" (refused: {r.trial_error[:80]})"
                                                                   if r.trial_error else "")  # fmt: skip
            lines.append(f"  {r.worker_id:<28} {short_digest(r.digest):<20} {r.since:<25} "
                         f"{r.swaps:>5} {r.failed_swaps:>6} {state_text}")  # fmt: skip
    return lines


def run_cli(
    action: str, target: RolloutTarget, model: str | None, wait_s: float, stale_s: float
) -> list[str]:
    """Both subcommands; EnrichError for the caller to print."""
    if action == "set":
        assert model is not None
        return set_desired(target, model, wait_s=wait_s, stale_s=stale_s)
    return status_lines(target.bootstrap, target.topic, target.group or None, stale_s)
