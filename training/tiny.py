"""A tiny BERT built from scratch for tests: WordPiece tokenizer trained on the titles + small random encoder.

``make_tiny_base`` writes a directory that loads exactly like a pretrained base (config, weights, tokenizer),
so training and export treat the tiny model and MiniLM the same way.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

__all__ = ["make_tiny_base", "tiny_bert_config", "train_wordpiece_tokenizer"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """An uncased BERT-style WordPiece tokenizer (offsets refer to the original, un-normalised text).

    NFKC first: full-width digits and letters of Chinese titles (``７５０ｇ``, ``ＸＬ``) read as ``750g`` and
    ``XL``, one vocabulary for both forms, while offsets still point at the full-width characters. Each
    Han character is its own word (BertNormalizer's ``handle_chinese_chars``), so spans cut between
    characters, never inside one. Every symbol is a word of its own too: the BERT pre-tokenizer splits
    punctuation but not symbols, so "550ml×24瓶" made a word piece "×24" straddling the net content and
    the pack ("24瓶"), and no span could start at "24".
    """
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.BertNormalizer(lowercase=True, strip_accents=True)]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Split(Regex(r"[^\w\s]"), "isolated")]
    )
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=1)
    tokenizer.train_from_iterator(list(texts), trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def tiny_bert_config(
    vocab_size: int, hidden_size: int = 64, layers: int = 2, max_positions: int = 128
) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden_size // 32),
        intermediate_size=hidden_size * 4,
        max_position_embeddings=max_positions,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )


def make_tiny_base(
    out_dir: Path | str,
    texts: Iterable[str],
    hidden_size: int = 64,
    layers: int = 2,
    vocab_size: int = 600,
    seed: int = 0,
) -> Path:
    """Write a from-scratch base model directory (tokenizer files, config.json, random weights)."""
    out_dir = Path(out_dir)
    tokenizer = train_wordpiece_tokenizer(texts, vocab_size)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    ).save_pretrained(out_dir)
    torch.manual_seed(seed)
    config = tiny_bert_config(tokenizer.get_vocab_size(), hidden_size, layers)
    BertModel(config, add_pooling_layer=False).save_pretrained(out_dir)
    return out_dir
