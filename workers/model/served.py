"""The served-model contract: what the worker and training read from an exported model directory.

A model directory holds `model_info.json` (name, version, digest), `labels.json` (tag and category maps)
and `tokenizer.json`; `model.onnx` next to them is the backend's business. The digest (see
`workers.model.identity`) is the model's identity; a directory exported before digests existed gets it
computed from its files on load.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from workers.contract.errors import ConfigError, ModelMismatch
from workers.model.decode import ModelLabels
from workers.model.encode import TitleEncoder
from workers.model.identity import compute_digest, is_digest, short_digest

__all__ = ["ServedModel", "check_output_dims", "find_model_dir", "read_digest"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """What the worker needs of a model directory: identity, tokenizer and label maps."""

    name: str
    version: str
    digest: str
    labels: ModelLabels
    encoder: TitleEncoder

    @property
    def short_digest(self) -> str:
        return short_digest(self.digest)

    @classmethod
    def load(cls, model_dir: Path) -> ServedModel:
        info = json.loads((model_dir / "model_info.json").read_text(encoding="utf-8"))
        return cls(
            str(info["name"]),
            str(info["version"]),
            read_digest(model_dir, info.get("digest")),
            ModelLabels.from_file(model_dir / "labels.json"),
            TitleEncoder.from_model_dir(model_dir),
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


def _recorded_digest(model_dir: Path) -> str:
    try:
        info = json.loads((model_dir / "model_info.json").read_text(encoding="utf-8"))
        return str(info.get("digest") or "")
    except (OSError, ValueError):
        return ""


def find_model_dir(digest: str, hint: Path | str | None, store: Path | None) -> Path:
    """The directory of the model `digest` (full, or a prefix such as the short form): `hint` when it
    records that digest, else the model store folder's entry named by the digest (``sha256:<hex>``,
    ``sha256-<hex>`` or ``<hex>``) or, failing that, the one whose model_info.json records it.
    ConfigError when none does (the message names ENRICH_MODEL_STORE)."""
    if hint and _recorded_digest(Path(hint)).startswith(digest):
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
