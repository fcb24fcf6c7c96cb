"""Title tokenization for the worker and for training: fast-tokenizer ids, character offsets, length buckets.

Padding goes to a few fixed sequence lengths (``seq_buckets``) so Triton's dynamic batcher, which only merges
requests of the same shape, can merge requests from different worker batches. numpy only: no torch here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, chain
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

__all__ = ["EncodedText", "TitleEncoder"]


@dataclass(frozen=True)
class EncodedText:
    """One tokenized title: token ids, each token's (start, end) character span in the title, token count,
    and how many of its tokens are the unknown token (a Chinese title read with an English vocabulary).

    Special tokens ([CLS], [SEP]) have the empty span (0, 0).
    """

    ids: np.ndarray
    offsets: list[tuple[int, int]]
    length: int
    unknown: int = 0


def _unknown_token_id(tokenizer: Tokenizer) -> int | None:
    """The id of the tokenizer's unknown token ([UNK] for WordPiece, <unk> for a Unigram/BPE vocabulary)."""
    model = json.loads(tokenizer.to_str())["model"]
    if model.get("unk_id") is not None:  # Unigram stores the id
        return int(model["unk_id"])
    token = model.get("unk_token")
    return tokenizer.token_to_id(token) if token else None


class TitleEncoder:
    """Tokenizes titles with the model's own ``tokenizer.json`` and pads batches to the smallest bucket."""

    def __init__(self, tokenizer_json_path: Path | str, max_length: int, seq_buckets: Sequence[int]) -> None:
        buckets = sorted(int(b) for b in seq_buckets)
        if not buckets or buckets[0] < 2:
            raise ValueError(f"seq_buckets must be non-empty lengths >= 2, got {list(seq_buckets)}")
        if max_length > buckets[-1]:
            raise ValueError(f"max_length {max_length} exceeds the largest sequence bucket {buckets[-1]}")
        self.max_length = max_length
        self.seq_buckets = tuple(buckets)
        self._tokenizer = Tokenizer.from_file(str(tokenizer_json_path))
        # A saved HF tokenizer may carry fixed-length padding (MiniLM's pads to 128): buckets replace it.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)
        self.pad_id = self._tokenizer.token_to_id("[PAD]") or 0
        self.unk_id = _unknown_token_id(self._tokenizer)

    @classmethod
    def from_model_dir(cls, model_dir: Path | str) -> TitleEncoder:
        """Build the encoder a model directory describes (``tokenizer.json`` + ``model_info.json``)."""
        model_dir = Path(model_dir)
        info = json.loads((model_dir / "model_info.json").read_text())
        return cls(model_dir / "tokenizer.json", int(info["max_length"]), info["seq_buckets"])

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        """Tokenize titles (truncated to ``max_length`` tokens, special tokens included).

        The batch's ids go into one int64 array; each title's ``ids`` is a view of its slice (one numpy
        conversion per batch instead of one per title).
        """
        encodings = self._tokenizer.encode_batch(list(texts))
        ids_per_text = [enc.ids for enc in encodings]
        lengths = [len(ids) for ids in ids_per_text]
        ends = list(accumulate(lengths))
        flat = np.fromiter(chain.from_iterable(ids_per_text), dtype=np.int64, count=ends[-1] if ends else 0)
        # [UNK] counts per title from one comparison over the batch (a per-title `ids == unk` costs ~5 us)
        is_unknown = flat == self.unk_id if self.unk_id is not None else np.zeros(len(flat), dtype=bool)
        unknown_before = np.concatenate(([0], np.cumsum(is_unknown))).tolist()
        return [
            EncodedText(
                ids=flat[end - length : end],
                offsets=enc.offsets,
                length=length,
                unknown=unknown_before[end] - unknown_before[end - length],
            )
            for enc, length, end in zip(encodings, lengths, ends, strict=True)
        ]  # enc.offsets is already a fresh list of (int, int) tuples

    def bucket_for(self, length: int) -> int:
        """The smallest sequence bucket that holds ``length`` tokens."""
        for bucket in self.seq_buckets:
            if length <= bucket:
                return bucket
        raise ValueError(f"{length} tokens exceed the largest sequence bucket {self.seq_buckets[-1]}")

    def pad_to_bucket(self, items: Sequence[EncodedText]) -> tuple[np.ndarray, np.ndarray]:
        """Stack items into (input_ids, attention_mask), int64 [B, S], S the smallest bucket that fits."""
        if not items:
            raise ValueError("pad_to_bucket needs at least one encoded text")
        lengths = np.fromiter((item.length for item in items), dtype=np.int64, count=len(items))
        width = self.bucket_for(int(lengths.max()))
        # True at each row's first `length` columns: a boolean assignment fills those cells in row-major
        # order, i.e. row by row with each row's ids, in one step.
        attention_mask = np.arange(width, dtype=np.int64) < lengths[:, None]
        input_ids = np.full((len(items), width), self.pad_id, dtype=np.int64)
        input_ids[attention_mask] = np.concatenate([item.ids for item in items])
        return input_ids, attention_mask.astype(np.int64)
