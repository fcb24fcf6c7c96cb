"""Training configuration: one typed dataclass with help text, loadable from JSON, overridable by CLI flags.

Precedence: dataclass defaults < ``--config file.json`` < explicit command-line flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrainConfig", "add_config_arguments", "config_from_args"]


def _opt(default: Any, help_text: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help_text})
    return field(default=default, metadata={"help": help_text})


@dataclass
class TrainConfig:
    """Everything `enrich train` needs; the model directory's metrics.json records the values used."""

    data_path: str = _opt("devtools/harness/offers.jsonl", "OA-Mine-format JSON-lines training file")
    output_root: str = _opt("models", "where model directories <name>/<version>/ are written")
    name: str = _opt("attribute-extractor", "model name (first path level under output_root)")
    version: str = _opt("", "model version string; empty = UTC timestamp")
    base_model: str = _opt(
        "minilm",
        "'minilm' (packaged all-MiniLM-L6-v2), 'mpnet' (all-mpnet-base-v2, fetched once into the cache: the "
        "teacher's base), 'tiny' (from scratch), or a path",
    )
    extra_data_paths: list[str] = _opt(  # noqa: RUF009
        [], "more OA-Mine files (e.g. reviewed corrections) added to the training split only, never to dev"
    )
    dev_fraction: float = _opt(0.15, "fraction of offers held out as dev set (hash of the title)")
    split_salt: str = _opt("oa-mine-dev-v1", "salt of the hash split; change it for another split")
    max_length: int = _opt(64, "maximum tokens per title (special tokens included)")
    seq_buckets: list[int] = _opt([16, 32, 64], "padded sequence lengths served by Triton")  # noqa: RUF009
    epochs: int = _opt(30, "maximum training epochs")
    batch_size: int = _opt(16, "training batch size")
    learning_rate: float = _opt(1e-4, "peak learning rate of the encoder (AdamW)")
    head_learning_rate: float = _opt(1e-3, "peak learning rate of the tagging and category heads")
    layer_lr_decay: float = _opt(
        1.0, "layer-wise learning-rate decay: each encoder layer below the top gets this times the rate above"
    )
    weight_decay: float = _opt(0.01, "AdamW weight decay (not on biases and LayerNorm)")
    warmup_ratio: float = _opt(0.1, "fraction of steps with linear warmup; linear decay afterwards")
    category_loss_weight: float = _opt(0.5, "weight of the category loss next to the tagging loss")
    dropout: float = _opt(0.1, "dropout before the heads")
    patience: int = _opt(5, "early stopping: epochs without dev F1 improvement")
    seed: int = _opt(13, "random seed (split is fixed by split_salt, not by this)")
    num_threads: int = _opt(2, "torch CPU threads")
    augment: bool = _opt(False, "add augmented copies of the training offers")
    augment_copies: int = _opt(1, "augmented copies per training offer")
    compare_without_augmentation: bool = _opt(False, "also train without augmentation and report both")
    distil_from: str = _opt(
        "", "teacher model directory (written by `enrich train`) to distil from; empty: none"
    )
    distil_alpha: float = _opt(0.5, "distillation: weight of the gold loss; 1 - alpha goes to the teacher's")
    distil_temperature: float = _opt(2.0, "distillation: softmax temperature of teacher and student")
    decode_method: str = _opt("viterbi", "BIO decoding: 'viterbi' (valid BIO) or 'argmax'")
    restrict_to_category: bool = _opt(True, "only keep attributes valid for the predicted category")
    tiny_hidden_size: int = _opt(64, "tiny model: hidden size")
    tiny_layers: int = _opt(2, "tiny model: transformer layers")
    tiny_vocab_size: int = _opt(600, "tiny model: WordPiece vocabulary size")
    save_checkpoints: bool = _opt(True, "write a checkpoint of the best model after each improving epoch")
    progress: bool = _opt(True, "show progress bars")

    @classmethod
    def from_json(cls, path: Path | str) -> TrainConfig:
        data = json.loads(Path(path).read_text())
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown training options {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` plus one flag per field; flags default to None so only explicit ones override."""
    parser.add_argument("--config", type=Path, help="JSON file with training options")
    for spec in dataclasses.fields(TrainConfig):
        flag = "--" + spec.name.replace("_", "-")
        help_text = f"{spec.metadata['help']} (default: {getattr(TrainConfig(), spec.name)})"
        if spec.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif spec.type == "list[int]":
            parser.add_argument(flag, type=int, nargs="+", default=None, help=help_text)
        elif spec.type == "list[str]":  # repeatable; --extra-data is the short spelling
            flags = [flag, flag.removesuffix("-paths")] if flag.endswith("-paths") else [flag]
            parser.add_argument(*flags, dest=spec.name, nargs="+", action="extend", default=None,
                                metavar="PATH", help=help_text)  # fmt: skip
        else:
            kind = {"int": int, "float": float, "str": str}[str(spec.type)]
            parser.add_argument(flag, type=kind, default=None, help=help_text)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    config = TrainConfig.from_json(args.config) if args.config else TrainConfig()
    overrides = {
        spec.name: getattr(args, spec.name)
        for spec in dataclasses.fields(TrainConfig)
        if getattr(args, spec.name, None) is not None
    }
    return config.replace(**overrides)
