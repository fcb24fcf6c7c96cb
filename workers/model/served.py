"""The served-model contract: what the worker and training read from an exported model directory.

A model directory holds `model_info.json` (name, version, digest, created_at, the scripts of its training
titles), `labels.json` (tag and category maps) and `tokenizer.json`; `model.onnx` next to them is the
backend's business. The digest (see `workers.model.identity`) is the model's identity; a directory exported
before digests existed gets it computed from its files on load.

`rank` orders models for the stale-update guard (`workers.stages.guard`): a result of a higher-ranked
model replaces a lower-ranked one's for the same listing_version. It is the model's creation time
(`model_info.json` "created_at", written by training) in epoch milliseconds, 0 when absent. The digest
(model identity) cannot order models; a rollout sequence from the control topic could replace this here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from workers.contract.errors import ConfigError, ModelMismatch
from workers.model.coverage import CoverageCheck
from workers.model.decode import ModelLabels
from workers.model.encode import TitleEncoder
from workers.model.identity import compute_digest, is_digest, short_digest

__all__ = ["ServedModel", "check_output_dims", "find_model_dir", "model_rank", "read_digest"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """What the worker needs of a model directory: identity, tokenizer, label maps, and the coverage check
    (scripts seen in training, the unknown token) that caps confidences on titles it cannot read."""

    name: str
    version: str
    digest: str
    labels: ModelLabels
    encoder: TitleEncoder
    rank: int = 0
    coverage: CoverageCheck | None = None

    @property
    def short_digest(self) -> str:
        return short_digest(self.digest)

    @classmethod
    def load(cls, model_dir: Path) -> ServedModel:
        info = json.loads((model_dir / "model_info.json").read_text(encoding="utf-8"))
        encoder = TitleEncoder.from_model_dir(model_dir)
        return cls(
            str(info["name"]),
            str(info["version"]),
            read_digest(model_dir, info.get("digest")),
            ModelLabels.from_file(model_dir / "labels.json"),
            encoder,
            rank=model_rank(info),
            coverage=CoverageCheck.from_model_info(info, encoder.unk_id),
        )


def read_digest(model_dir: Path, recorded: object) -> str:
    """The model's digest: the recorded one, checked against the files when the graph is here (a Triton
    worker's directory may hold only tokenizer and labels); computed when none was recorded.

    A recorded digest that the files contradict means someone copied a file over an exported model (a new
    labels.json next to an old graph, say): its events would carry an identity they do not have.
    """
    if recorded is not None and not is_digest(recorded):
        raise ModelMismatch(f"{model_dir}/model_info.json: digest {recorded!r} is not sha256:<64 hex>")
    if recorded is None or (model_dir / "model.onnx").is_file():
        computed = compute_digest(model_dir)
        if recorded is None:
            log.info("model directory %s has no recorded digest (exported before digests); computed %s",
                     model_dir, short_digest(computed))
            return computed
        if computed != recorded:
            raise ModelMismatch(
                f"model directory {model_dir}: its files have digest {short_digest(computed)} but "
                f"model_info.json records {short_digest(str(recorded))}: a file was replaced after export; "
                "export the model again (`enrich export`)"
            )
    return str(recorded)


def check_output_dims(labels: ModelLabels, tag_dim: int, category_dim: int, where: str) -> None:
    """ModelMismatch unless the model's output widths are the label maps' sizes (else decode would index
    past a map, or silently name the wrong tag)."""
    if (tag_dim, category_dim) != (len(labels.tags), len(labels.categories)):
        raise ModelMismatch(
            f"{where} returns {tag_dim} tag and {category_dim} category probabilities but labels.json has "
            f"{len(labels.tags)} tags and {len(labels.categories)} categories: the label maps belong to "
            "another model; use the model directory exported with this graph"
        )


def model_rank(info: dict[str, object]) -> int:
    """`created_at` of a model_info.json as epoch milliseconds (naive times read as UTC); 0 when absent."""
    created = info.get("created_at")
    if not isinstance(created, str) or not created:
        return 0
    try:
        moment = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"model_info.json: created_at {created!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0, int(moment.timestamp() * 1000))


def _recorded_digest(model_dir: Path) -> str:
    try:
        info = json.loads((model_dir / "model_info.json").read_text(encoding="utf-8"))
        return str(info.get("digest") or "")
    except (OSError, ValueError):
        return ""


def _computed_digest(model_dir: Path) -> str:
    try:
        return compute_digest(model_dir)
    except OSError:
        return ""


def find_model_dir(digest: str, hint: Path | str | None, store: Path | None) -> Path:
    """The directory of the model `digest` (full, or a prefix such as the short form): `hint` when it
    records that digest, else the model store folder's entry named by the digest (``sha256:<hex>``,
    ``sha256-<hex>`` or ``<hex>``) or, failing that, the one whose model_info.json records it.
    ConfigError when none does (the message names ENRICH_MODEL_STORE)."""
    # A directory exported before digests records none: the desired record named it, so its files decide
    # (ServedModel.load computes the same digest; `rollout set` accepted it that way).
    if hint and (_recorded_digest(Path(hint)) or _computed_digest(Path(hint))).startswith(digest):
        return Path(hint)
    if store is not None and store.is_dir():
        hex_part = digest.removeprefix("sha256:")
        for name in (f"sha256:{hex_part}", f"sha256-{hex_part}", hex_part):
            if _recorded_digest(store / name).startswith(digest):
                return store / name
        found = sorted(d for d in store.iterdir() if _recorded_digest(d).startswith(digest))
        if len({_recorded_digest(d) for d in found}) > 1:
            raise ConfigError(f"{digest} is the prefix of several models in {store}: give more of it")
        if found:
            return found[0]
    raise ConfigError(
        f"model {short_digest(digest) if is_digest(digest) else digest} not found"
        + (f" at {hint}" if hint else "") + f" nor in the model store {store or '(ENRICH_MODEL_STORE unset)'}"
    )
