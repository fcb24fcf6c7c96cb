"""A model's identity: the sha256 of the files that decide its outputs (graph, label maps, tokenizer).

The version string is a name people choose (and `training/build.py` used to call every model `v1`), so
it cannot tell two models apart; the digest can. It is written into `model_info.json` at export
(`"digest"`), and is what the cache keys, the attribute events, the `enrich_model_info` metric and the
Triton repository (`config.pbtxt` parameter `model_digest`) carry.

Canonical form: for each file of `DIGEST_FILES` that exists, in that order, the file name, a NUL, the
length as 8 big-endian bytes, then the bytes. `model_info.json` is left out (it holds the digest itself,
and its fields — name, version, created_at, seq buckets — do not change what the model answers).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

__all__ = ["DIGEST_FILES", "cache_id", "compute_digest", "is_digest", "short_digest"]

DIGEST_FILES = (
    "model.onnx",
    "labels.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHUNK = 1 << 20


def compute_digest(model_dir: Path | str) -> str:
    """``sha256:<64 hex>`` over the model directory's `DIGEST_FILES` (see the module docstring)."""
    model_dir = Path(model_dir)
    sha = hashlib.sha256()
    for name in DIGEST_FILES:
        path = model_dir / name
        if not path.is_file():
            continue
        sha.update(name.encode() + b"\0" + path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                sha.update(chunk)
    return "sha256:" + sha.hexdigest()


def is_digest(text: object) -> bool:
    return isinstance(text, str) and _DIGEST.match(text) is not None


def short_digest(digest: str) -> str:
    """The display form, ``sha256:`` and the first 12 hex digits."""
    return digest[: len("sha256:") + 12]


def cache_id(digest: str) -> str:
    """The digest's part of a cache key: 32 hex digits (128 bits: no collision among any number of models
    a deployment will see), half the key bytes of the full digest in each of millions of Redis keys."""
    if not is_digest(digest):
        raise ValueError(f"not a model digest (sha256:<64 hex>): {digest!r}")
    return digest[len("sha256:") : len("sha256:") + 32]
