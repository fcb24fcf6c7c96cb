"""Decoding BIO probabilities back into values: round trips of known spans, unicode, repeats, constraints."""

from __future__ import annotations

import numpy as np
import pytest

from devtools.fixtures import DEFAULT_FIXTURE_PATH, generate_offers
from training.data import find_value_spans, load_offers, token_tags
from workers.model.decode import ModelLabels, decode_attributes, decode_category

LABELS = ModelLabels.from_attributes(
    ["Brand", "Color", "Gender", "Size"], {"Shoes": ["Brand", "Color", "Gender", "Size"], "Tea": ["Brand"]}
)


def words(text: str) -> list[tuple[int, int]]:
    """Whitespace 'tokens' with [CLS]/[SEP] around them, like a fast tokenizer's offsets."""
    offsets, start = [(0, 0)], None
    for index, char in enumerate(text + " "):
        if char.isspace() and start is not None:
            offsets.append((start, index))
            start = None
        elif not char.isspace() and start is None:
            start = index
    return [*offsets, (0, 0)]


def one_hot(tag_ids: np.ndarray, num_tags: int, width: int, sharp: float = 0.9) -> np.ndarray:
    probs = np.full((width, num_tags), (1 - sharp) / (num_tags - 1), dtype=np.float32)
    for position, tag in enumerate(tag_ids):
        probs[position, max(int(tag), 0)] = sharp
    return probs


def test_unicode_and_repeated_values_round_trip_with_exact_offsets() -> None:
    text = "Søren Shoes Women's Crème Loafer 😀 - US Women's 8½ M"
    values = (("Brand", "Søren Shoes"), ("Gender", "Women's"), ("Color", "Crème"), ("Size", "8½ M"))
    offsets = words(text)
    tags = token_tags(offsets, find_value_spans(text, values), LABELS)
    found = decode_attributes(
        text, offsets, one_hot(tags, len(LABELS.tags), 32), LABELS, one_per_attribute=False
    )
    assert {(a.name, a.value) for a in found} == set(values)
    assert [a.value for a in found if a.name == "Gender"] == ["Women's", "Women's"]  # both occurrences
    for attribute in found:
        assert text[attribute.start : attribute.end] == attribute.value
        assert 0.0 < attribute.confidence <= 1.0


def test_fixture_offers_round_trip_through_the_real_tokenizer_offsets(tmp_path) -> None:
    from training.data import build_labels
    from training.tiny import train_wordpiece_tokenizer
    from workers.model.encode import TitleEncoder

    offers = load_offers(DEFAULT_FIXTURE_PATH)
    labels = build_labels(offers)
    tokenizer = train_wordpiece_tokenizer([o.text for o in offers], 300)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    encoder = TitleEncoder(tmp_path / "tokenizer.json", 64, [16, 32, 64])
    for offer, encoded in zip(offers, encoder.encode([o.text for o in offers]), strict=True):
        tags = token_tags(encoded.offsets, find_value_spans(offer.text, offer.values), labels)
        probs = one_hot(tags, len(labels.tags), 64)
        found = decode_attributes(offer.text, encoded.offsets, probs, labels)
        assert {(a.name, a.value) for a in found} == set(offer.values), offer.text


def test_viterbi_repairs_a_stray_inside_tag_that_argmax_keeps() -> None:
    text = "Navy Blue Crocs"
    offsets = words(text)
    tag = {t: i for i, t in enumerate(LABELS.tags)}
    probs = np.full((5, len(LABELS.tags)), 0.01, dtype=np.float32)
    probs[1, tag["I-Color"]], probs[1, tag["B-Color"]] = 0.5, 0.45  # "Navy": I- is (invalidly) first
    probs[2, tag["I-Color"]] = 0.9
    probs[3, tag["B-Brand"]] = 0.9
    viterbi = decode_attributes(text, offsets, probs, LABELS)
    argmax = decode_attributes(text, offsets, probs, LABELS, method="argmax", one_per_attribute=False)
    assert {(a.name, a.value) for a in viterbi} == {("Color", "Navy Blue"), ("Brand", "Crocs")}
    assert ("Color", "Navy Blue") in {(a.name, a.value) for a in argmax}


def test_allowed_attributes_and_one_value_per_attribute() -> None:
    text = "Crocs Navy Crocs Red"
    offsets = words(text)
    tag = {t: i for i, t in enumerate(LABELS.tags)}
    probs = np.full((6, len(LABELS.tags)), 0.01, dtype=np.float32)
    probs[0, 0] = probs[5, 0] = 0.9
    probs[1, tag["B-Brand"]], probs[3, tag["B-Brand"]] = 0.9, 0.6
    probs[2, tag["B-Color"]], probs[4, tag["B-Color"]] = 0.7, 0.8
    best = decode_attributes(text, offsets, probs, LABELS)
    assert [(a.name, a.value, a.start) for a in best] == [("Brand", "Crocs", 0), ("Color", "Red", 17)]
    only_tea = decode_attributes(text, offsets, probs, LABELS, allowed=LABELS.attributes_by_category["Tea"])
    assert {a.name for a in only_tea} == {"Brand"}


def test_bucket_padding_rows_are_ignored_and_bad_shapes_raise() -> None:
    text = "Crocs"
    probs = np.zeros((16, len(LABELS.tags)), dtype=np.float32)
    probs[:, 0] = 1.0
    probs[1, 0], probs[1, LABELS.tags.index("B-Brand")] = 0.0, 1.0
    assert [a.value for a in decode_attributes(text, words(text), probs, LABELS)] == ["Crocs"]
    with pytest.raises(ValueError, match="tag_probs"):
        decode_attributes(text, words(text), probs[:, :3], LABELS)
    with pytest.raises(ValueError, match="rows"):
        decode_attributes(text, words(text), probs[:2], LABELS)


def test_decode_category_and_label_round_trip() -> None:
    assert decode_category(np.array([0.2, 0.8], dtype=np.float32), LABELS) == ("Tea", pytest.approx(0.8))
    assert ModelLabels.from_dict(LABELS.to_dict()) == LABELS
    with pytest.raises(ValueError, match="must start with 'O'"):
        ModelLabels(tags=("B-X",), categories=(), attributes_by_category={})


def test_generated_fixture_file_is_reproducible() -> None:
    offers = load_offers(DEFAULT_FIXTURE_PATH)
    assert offers == generate_offers(len(offers))


def test_a_word_piece_tagged_alone_is_widened_to_its_word() -> None:
    text = "Assorted Gummy"
    offsets = [(0, 0), (0, 3), (3, 8), (9, 14), (0, 0)]  # "Ass" "##orted" "Gummy"
    probs = np.full((5, len(LABELS.tags)), 0.01, dtype=np.float32)
    probs[:, 0] = 0.9
    probs[1, 0], probs[1, LABELS.tags.index("B-Color")] = 0.01, 0.9
    snapped = decode_attributes(text, offsets, probs, LABELS)
    assert [(a.value, a.start, a.end) for a in snapped] == [("Assorted", 0, 8)]
    raw = decode_attributes(text, offsets, probs, LABELS, snap_to_words=False)
    assert [a.value for a in raw] == ["Ass"]


def _masked_log_probs(rng: np.random.Generator, labels: ModelLabels, allowed: tuple[str, ...]) -> np.ndarray:
    """Log-probabilities as decode_attributes builds them: disallowed tags zeroed; ties, underflow."""
    probs = rng.dirichlet(np.full(len(labels.tags), 0.3), size=int(rng.integers(1, 30)))
    probs = np.round(probs, int(rng.integers(1, 4)))  # ties between tags and between predecessors
    probs[rng.random(len(probs)) < 0.2, 0] = 0.0  # O underflows: O and the disallowed tags tie
    mask = np.array([a is None or a in allowed for a in labels.tag_attributes])
    return np.log(np.where(mask, probs, 0.0) + 1e-12)


def test_fast_viterbi_paths_equal_the_numpy_programme() -> None:
    from workers.model import decode

    labels = ModelLabels.from_attributes([f"A{i}" for i in range(12)], {"C": [f"A{i}" for i in range(12)]})
    rng = np.random.default_rng(7)
    fallbacks = 0
    for trial in range(3000):
        allowed = tuple(f"A{i}" for i in range(12) if rng.random() < 0.4)
        log_probs = _masked_log_probs(rng, labels, allowed)
        reference = decode._viterbi_numpy(log_probs, labels.tags)
        assert decode._viterbi_floats(log_probs, labels.tags) == reference, trial
        assert decode._viterbi(log_probs, labels.tags, decode._allowed_tags(labels, allowed)) == reference
        fallbacks += not decode._is_valid_bio(log_probs.argmax(axis=1).tolist(), labels.tags)
    assert fallbacks > 1000  # the programme itself ran, not only the argmax shortcut


def test_viterbi_keeps_numpy_semantics_for_non_finite_and_unrestrictable_inputs() -> None:
    from workers.model import decode

    allowed = decode._allowed_tags(LABELS, ("Brand",))
    assert allowed is not None and allowed.tags == ("O", "B-Brand", "I-Brand")
    log_probs = np.log(np.full((4, len(LABELS.tags)), 0.1))
    log_probs[0, LABELS.tags.index("I-Color")] = 0.0  # argmax invalid; a disallowed tag above O
    assert decode._viterbi(log_probs, LABELS.tags, allowed) == decode._viterbi_numpy(log_probs, LABELS.tags)
    log_probs[2, 3] = np.nan
    assert decode._viterbi(log_probs, LABELS.tags, allowed) == decode._viterbi_numpy(log_probs, LABELS.tags)


def test_allowed_as_a_set_or_a_tuple_decodes_the_same() -> None:
    text = "Crocs Navy Crocs Red"
    rng = np.random.default_rng(3)
    for _ in range(50):
        probs = rng.dirichlet(np.full(len(LABELS.tags), 0.3), size=6).astype(np.float32)
        as_tuple = decode_attributes(text, words(text), probs, LABELS, ("Brand", "Color"))
        assert decode_attributes(text, words(text), probs, LABELS, {"Color", "Brand"}) == as_tuple
        every = LABELS.attributes_by_category["Shoes"]
        assert decode_attributes(text, words(text), probs, LABELS, every) == decode_attributes(
            text, words(text), probs, LABELS
        )
