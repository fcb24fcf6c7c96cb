"""Start-up checks that a served model fits the worker: Triton's model config (shapes, batch size), the
digest it records for the version called, and fixed label dimensions against labels.json. Each raises
`ModelMismatch` with the fix in its message (a configuration error: `enrich worker` exits 3).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from workers.contract.errors import ModelMismatch
from workers.model.identity import short_digest

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "ModelFit",
    "check_label_dims",
    "check_triton_digest",
    "check_triton_model_config",
]

log = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("tag_probs", "category_probs")


@dataclass(frozen=True)
class ModelFit:
    """What the worker will send and expect, for a backend's start-up check (`check_model`): batches of up
    to `batch_size` rows padded to at most `max_seq_len` tokens, the model `digest` (None: not checked) and
    the `(tags, categories)` of labels.json (None: not checked)."""

    batch_size: int
    max_seq_len: int | None = None
    digest: str | None = None
    label_counts: tuple[int, int] | None = None


def check_triton_model_config(config: dict[str, Any], *, batch_size: int, max_seq_len: int | None) -> None:
    """Raise :class:`ModelMismatch` unless the served config takes our inputs at our batch size."""
    name = config.get("name", "?")
    max_batch_size = int(config.get("max_batch_size", 0))
    if max_batch_size < batch_size:
        raise ModelMismatch(
            f"Triton model {name!r} has max_batch_size={max_batch_size} but the worker sends batches of up "
            f"to {batch_size} rows: lower the worker's batch size to <= {max_batch_size} or raise "
            f"max_batch_size in the model's config.pbtxt"
        )
    inputs = {entry["name"]: entry for entry in config.get("input", [])}
    outputs = {entry["name"] for entry in config.get("output", [])}
    missing = [n for n in INPUT_NAMES if n not in inputs] + [n for n in OUTPUT_NAMES if n not in outputs]
    if missing:
        raise ModelMismatch(f"Triton model {name!r} lacks the tensors {missing} the worker uses")
    for input_name in INPUT_NAMES:
        spec = inputs[input_name]
        if spec.get("data_type") != "TYPE_INT64":
            raise ModelMismatch(
                f"Triton model {name!r} input {input_name!r} is {spec.get('data_type')}, expected TYPE_INT64"
            )
        dims = [int(d) for d in spec.get("dims", [])]
        if max_seq_len is not None and dims and dims[-1] != -1 and dims[-1] < max_seq_len:
            raise ModelMismatch(
                f"Triton model {name!r} input {input_name!r} takes sequences of {dims[-1]} tokens but the "
                f"worker pads up to {max_seq_len}: align the seq buckets with the model config"
            )


def check_triton_digest(config: dict[str, Any], version: str, expected: str, url: str) -> None:
    """ModelMismatch unless the served `config.pbtxt` records ``expected`` for ``version`` ("" = the newest,
    `model_digest`; N: `model_digest_v<N>`, see docs/lifecycle.md). None recorded (a repository from
    before digests): logged and accepted, so old deployments keep running."""
    parameters = config.get("parameters", {})
    key = f"model_digest_v{version}" if version else "model_digest"
    served = parameters.get(key, {}).get("string_value")
    name = config.get("name", "?")
    if served is None:
        log.warning("Triton model %r at %s records no %s: cannot check it is the worker's model %s",
                    name, url, key, short_digest(expected))
        return
    if served != expected:
        which = f"version {version}" if version else "the version it serves"
        raise ModelMismatch(
            f"Triton model {name!r} at {url} ({which}) is {short_digest(served)} but the worker's model "
            f"directory is {short_digest(expected)}: the worker would emit another model's results under "
            "its own identity. Point ENRICH_MODEL_DIR at the directory exported with the served version, or "
            "export this model into the Triton repository (`enrich export`) and let Triton load it"
        )


def check_label_dims(
    what: str, tag_dims: list[Any], category_dims: list[Any], label_counts: tuple[int, int] | None
) -> None:
    """ModelMismatch when a fixed label dimension (not -1 or a name) differs from labels.json."""
    if label_counts is None:
        return
    for output, dims, expected, key in (("tag_probs", tag_dims, label_counts[0], "tags"),
                                        ("category_probs", category_dims, label_counts[1], "categories")):
        last = dims[-1] if dims else None
        if isinstance(last, int) and last >= 0 and last != expected:
            raise ModelMismatch(
                f"{what} output {output!r} has {last} labels but labels.json has {expected} {key}: the "
                "model and labels.json come from different exports (ENRICH_MODEL_DIR / --model-dir)"
            )
