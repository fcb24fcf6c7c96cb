"""The multi-task model: a BERT-style encoder, a BIO tagging head and a category head.

Saved as an HF-style directory: ``config.json`` (the encoder's config plus ``id2label`` for the tags and
``category_labels``) and ``model.safetensors`` (encoder + heads), so the artifact carries its own labels.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig
from transformers.utils import logging as hf_logging

from workers.model.decode import ModelLabels

__all__ = ["AttributeModel", "ProbabilityOutputs", "load_model", "new_model", "save_model", "torch_runner"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

WEIGHTS_FILE = "model.safetensors"


class AttributeModel(nn.Module):
    """Encoder -> (tag logits [B,S,T] per token, category logits [B,C] from the masked mean of tokens)."""

    def __init__(self, encoder: nn.Module, num_tags: int, num_categories: int, dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = int(encoder.config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.tag_head = nn.Linear(hidden, num_tags)
        self.category_head = nn.Linear(hidden, num_categories)

    @property
    def config(self) -> PretrainedConfig:
        return self.encoder.config

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.tag_head(self.dropout(hidden)), self.category_head(self.dropout(pooled))


class ProbabilityOutputs(nn.Module):
    """The served graph: softmax over tags and categories (the ONNX/Triton output contract)."""

    def __init__(self, model: AttributeModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tag_logits, category_logits = self.model(input_ids, attention_mask)
        return tag_logits.softmax(dim=-1), category_logits.softmax(dim=-1)


def _label_config(config: PretrainedConfig, labels: ModelLabels, dropout: float) -> None:
    config.id2label = dict(enumerate(labels.tags))
    config.label2id = {tag: i for i, tag in enumerate(labels.tags)}
    config.category_labels = list(labels.categories)
    config.head_dropout = dropout


def new_model(base_dir: Path | str, labels: ModelLabels, dropout: float = 0.1) -> AttributeModel:
    """Pretrained encoder from ``base_dir`` (offline) with freshly initialised heads."""
    encoder = AutoModel.from_pretrained(str(base_dir), add_pooling_layer=False, local_files_only=True)
    _label_config(encoder.config, labels, dropout)
    return AttributeModel(encoder, len(labels.tags), len(labels.categories), dropout)


def save_model(model: AttributeModel, out_dir: Path | str) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out_dir)
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE))


def load_model(model_dir: Path | str) -> AttributeModel:
    """Rebuild the model from a model directory written by :func:`save_model` (eval mode)."""
    model_dir = Path(model_dir)
    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    encoder = AutoModel.from_config(config, add_pooling_layer=False)
    model = AttributeModel(encoder, len(config.id2label), len(config.category_labels), config.head_dropout)
    model.load_state_dict(load_file(str(model_dir / WEIGHTS_FILE)))
    return model.eval()


def torch_runner(model: AttributeModel) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """In-process inference with the same softmax outputs as the ONNX graph (a training.evaluate.RunBatch)."""

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        model.eval()
        with torch.inference_mode():
            tag_logits, category_logits = model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
        return tag_logits.softmax(-1).numpy(), category_logits.softmax(-1).numpy()

    return run
