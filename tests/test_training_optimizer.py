"""The optimizer's learning rates: heads at their own rate, encoder layers decayed from the top down."""

from __future__ import annotations

import pytest
from transformers import BertModel

from training.config import TrainConfig
from training.model import AttributeModel
from training.tiny import tiny_bert_config
from training.train import make_optimizer


def tiny_model(layers: int) -> AttributeModel:
    encoder = BertModel(
        tiny_bert_config(vocab_size=50, hidden_size=16, layers=layers), add_pooling_layer=False
    )
    return AttributeModel(encoder, num_tags=5, num_categories=3, dropout=0.1)


def peak_rate_by_parameter(model: AttributeModel, config: TrainConfig) -> dict[str, float]:
    optimizer, _ = make_optimizer(model, config, total_steps=100)
    rate_of = {id(p): group["initial_lr"] for group in optimizer.param_groups for p in group["params"]}
    return {name: rate_of[id(parameter)] for name, parameter in model.named_parameters()}


def test_without_decay_every_encoder_parameter_shares_one_rate_and_the_heads_theirs() -> None:
    model = tiny_model(layers=3)
    rates = peak_rate_by_parameter(model, TrainConfig(learning_rate=1e-4, head_learning_rate=1e-3))
    encoder = {rate for name, rate in rates.items() if name.startswith("encoder.")}
    heads = {rate for name, rate in rates.items() if not name.startswith("encoder.")}
    assert encoder == {1e-4} and heads == {1e-3}


def test_layer_decay_lowers_each_layer_below_the_top_and_the_embeddings_most() -> None:
    model = tiny_model(layers=3)
    rates = peak_rate_by_parameter(
        model, TrainConfig(learning_rate=1e-4, head_learning_rate=1e-3, layer_lr_decay=0.5)
    )
    assert rates["encoder.encoder.layer.2.attention.self.query.weight"] == pytest.approx(1e-4)
    assert rates["encoder.encoder.layer.1.output.dense.bias"] == pytest.approx(5e-5)
    assert rates["encoder.encoder.layer.0.intermediate.dense.weight"] == pytest.approx(2.5e-5)
    assert rates["encoder.embeddings.word_embeddings.weight"] == pytest.approx(1.25e-5)
    assert all(rate == 1e-3 for name, rate in rates.items() if not name.startswith("encoder."))
    assert len({rate for name, rate in rates.items() if name.startswith("encoder.")}) == 4
