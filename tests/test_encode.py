"""Title encoding: offsets into the original text, truncation, bucket padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.tiny import train_wordpiece_tokenizer
from workers.model.encode import TitleEncoder

TITLES = [
    "Café Bustelo Espresso Roast Ground Coffee, 10 oz",
    "Søren Shoes Women's Crème Loafer 😀 (US Women's 8½ M)",
    "Twinings Earl Grey Tea Bags, 20 Count (Pack of 6)",
]


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_wordpiece_tokenizer(TITLES * 3, 200).save(str(path))
    return path


def test_offsets_point_into_the_original_unicode_text(tokenizer_json: Path) -> None:
    encoder = TitleEncoder(tokenizer_json, 64, [16, 32, 64])
    encoded = encoder.encode(TITLES)
    for text, item in zip(TITLES, encoded, strict=True):
        assert item.length == len(item.ids) == len(item.offsets)
        assert item.offsets[0] == (0, 0) and item.offsets[-1] == (0, 0)  # [CLS] ... [SEP]
        pieces = [text[s:e] for s, e in item.offsets[1:-1]]
        assert all(piece and not piece.isspace() for piece in pieces)
    start = TITLES[1].index("Crème")
    covering = [(s, e) for s, e in encoded[1].offsets if s >= start and e <= start + len("Crème") and e > s]
    assert covering[0][0] == start and covering[-1][1] == start + len("Crème")


def test_pad_to_the_smallest_bucket_and_truncate_to_max_length(tokenizer_json: Path) -> None:
    encoder = TitleEncoder(tokenizer_json, 32, [8, 16, 32])
    short = encoder.encode(["Café"])
    ids, mask = encoder.pad_to_bucket(short)
    assert ids.shape == mask.shape == (1, 8) and ids.dtype == mask.dtype == np.int64
    assert mask.sum() == short[0].length and (ids[0, short[0].length :] == encoder.pad_id).all()
    long = encoder.encode([" ".join(TITLES * 3)])
    assert long[0].length == 32
    assert encoder.pad_to_bucket(long + short)[0].shape == (2, 32)


def test_bad_settings_and_empty_batches_are_refused(tokenizer_json: Path) -> None:
    with pytest.raises(ValueError, match="largest sequence bucket"):
        TitleEncoder(tokenizer_json, 128, [16, 32, 64])
    encoder = TitleEncoder(tokenizer_json, 64, [16, 32, 64])
    with pytest.raises(ValueError, match="at least one"):
        encoder.pad_to_bucket([])


def test_batch_ids_and_padding_equal_the_tokenizer_per_title(tokenizer_json: Path) -> None:
    from tokenizers import Tokenizer

    encoder = TitleEncoder(tokenizer_json, 32, [8, 16, 32])
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.enable_truncation(32)
    texts = [*TITLES, "", "Café", " ".join(TITLES * 3)]
    encoded = encoder.encode(texts)
    assert encoder.encode([]) == []
    for text, item in zip(texts, encoded, strict=True):
        single = tokenizer.encode(text)
        assert item.ids.dtype == np.int64 and item.ids.tolist() == single.ids
        assert item.offsets == single.offsets and item.length == len(single.ids)
    for batch in (encoded, encoded[3:5], encoded[::-1]):
        ids, mask = encoder.pad_to_bucket(batch)
        assert ids.dtype == mask.dtype == np.int64
        for row, item in enumerate(batch):
            assert ids[row].tolist() == [*item.ids.tolist(), *[encoder.pad_id] * (ids.shape[1] - item.length)]
            assert mask[row].tolist() == [1] * item.length + [0] * (ids.shape[1] - item.length)
