"""The strict metric and the literature's (ExtractGPT rules) on hand-made cases: each rule pinned by a case
where the two disagree, plus the count of gold a model cannot get."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from training.data import Offer
from training.metrics import data_issues, score, score_literature
from workers.model.decode import Attribute, ModelLabels


@dataclass
class Guess:
    category: str
    attributes: list[Attribute] = field(default_factory=list)


def guess(category: str, **values: str) -> Guess:
    return Guess(category, [Attribute(n.replace("_", " "), v, 0.9, 0, len(v)) for n, v in values.items()])


def offer(
    values: dict[str, str | list[str]], absent: tuple[str, ...] = (), category: str = "Coffee"
) -> Offer:
    pairs = [(n, v) for n, vs in values.items() for v in ([vs] if isinstance(vs, str) else vs)]
    return Offer("title", category, tuple(pairs), absent)


def counts(metrics: dict) -> tuple[int, ...]:
    micro = metrics["micro"]
    return tuple(micro[k] for k in ("tp", "fp", "fn"))


def literature(offers: list[Offer], guesses: list[Guess]) -> dict[str, int]:
    micro = score_literature(offers, guesses)["micro"]
    return {k: micro[k] for k in ("nn", "nv", "vn", "vc", "vw") if micro[k]}


def test_case_differences_count_for_strict_but_not_for_the_literature() -> None:
    offers, guesses = [offer({"Brand": "Lavazza"})], [guess("Coffee", Brand="LAVAZZA")]
    assert counts(score(offers, guesses)) == (1, 0, 0)
    assert literature(offers, guesses) == {"vw": 1}  # case-sensitive: wrong, in precision and recall


def test_a_predicted_attribute_the_gold_does_not_mention_is_a_false_positive_only_for_strict() -> None:
    offers, guesses = [offer({"Brand": "Lavazza"})], [guess("Coffee", Brand="Lavazza", Roast_type="Dark")]
    assert counts(score(offers, guesses)) == (1, 1, 0)
    assert literature(offers, guesses) == {"vc": 1}  # Roast type is not in the gold: ignored
    assert score_literature(offers, guesses)["micro"]["precision"] == 1.0


def test_gold_na_with_a_prediction_is_a_literature_false_positive_and_without_one_counts_nothing() -> None:
    offers = [offer({"Brand": "Lavazza"}, absent=("Roast type",)), offer({}, absent=("Roast type",))]
    guesses = [guess("Coffee", Brand="Lavazza", Roast_type="Dark"), guess("Coffee")]
    assert literature(offers, guesses) == {"vc": 1, "nv": 1, "nn": 1}
    micro = score_literature(offers, guesses)["micro"]
    assert (micro["precision"], micro["recall"]) == (0.5, 1.0)
    assert counts(score(offers, guesses)) == (1, 1, 0)  # strict: n/a is just "not gold"


def test_gold_is_stripped_for_the_literature_and_whitespace_collapsed_for_strict() -> None:
    offers = [offer({"Load size": " 232 Total Loads"}), offer({"Load size": "232  Total Loads"})]
    guesses = [guess("Coffee", Load_size="232 Total Loads")] * 2
    assert literature(offers, guesses) == {"vc": 1, "vw": 1}  # inner spaces are not collapsed there
    assert counts(score(offers, guesses)) == (2, 0, 0)


def test_several_gold_values_one_match_is_enough_for_the_literature_strict_misses_the_others() -> None:
    offers, guesses = [offer({"Flavor": ["Mango", "Lime"]})], [guess("Coffee", Flavor="Lime")]
    assert literature(offers, guesses) == {"vc": 1}
    assert counts(score(offers, guesses)) == (1, 0, 1)


def test_missing_and_wrong_values() -> None:
    offers = [offer({"Brand": "Lavazza", "Roast type": "Dark Roast"})]
    guesses = [guess("Coffee", Roast_type="Medium Roast")]
    assert literature(offers, guesses) == {"vn": 1, "vw": 1}
    micro = score_literature(offers, guesses)["micro"]
    assert (micro["precision"], micro["recall"]) == (0.0, 0.0)
    assert counts(score(offers, guesses)) == (0, 1, 2)


def test_literature_macro_averages_attribute_x_gold_category_pairs_and_skips_all_na_pairs() -> None:
    offers = [
        offer({"Brand": "Lavazza"}, absent=("Flavor",)),
        offer({"Brand": "Twinings"}, category="Tea"),
        offer({"Brand": "Lipton"}, category="Tea"),
    ]
    guesses = [guess("Coffee", Brand="Lavazza"), guess("Tea", Brand="Twinings"), guess("Tea")]
    result = score_literature(offers, guesses)
    assert set(result["per_pair"]) == {"Brand_Coffee", "Brand_Tea"}  # Flavor_Coffee: only NN, skipped
    assert result["per_pair"]["Brand_Tea"]["recall"] == 0.5
    assert result["macro"]["recall"] == pytest.approx(0.75)
    assert result["micro"]["recall"] == pytest.approx(2 / 3)


def test_score_reports_both_metrics_and_the_category_figures() -> None:
    offers = [offer({"Brand": "Lavazza"}), offer({"Brand": "Twinings"}, category="Tea")]
    metrics = score(offers, [guess("Coffee", Brand="Lavazza"), guess("Coffee", Brand="twinings")])
    assert metrics["micro"]["f1"] == 1.0 and metrics["literature"]["micro"]["f1"] == 0.5
    assert metrics["category_accuracy"] == 0.5
    assert metrics["category_macro_f1"] == pytest.approx((2 / 3 + 0) / 2)


def test_data_issues_count_what_a_span_model_cannot_get() -> None:
    labels = ModelLabels.from_attributes(["Brand", "Roast type"], {"Coffee": ["Brand", "Roast type"]})
    offers = [
        Offer("Lavazza Dark Roast", "Coffee", (("Brand", "LAVAZZA"), ("Roast type", "Dark Roast"))),
        Offer("Mango Lime Tea", "Tea", (("Flavor", "Mango"), ("Flavor", "Lime"), ("Brand", "Twinings"))),
    ]
    assert data_issues(offers, labels) == {
        "gold_values": 5,
        "values_not_in_title": 2,  # LAVAZZA (case), Twinings
        "attributes_with_several_values": 1,
        "values_of_unseen_attributes": 2,
        "unseen_attributes": ["Flavor"],
        "offers_of_unseen_categories": 1,
        "unseen_categories": ["Tea"],
    }
