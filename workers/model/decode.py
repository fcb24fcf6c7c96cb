"""Turn the model's probabilities back into attribute values with character spans, and a category.

Used by the worker after inference and by training's evaluation, so the metric measures what is served.
numpy only: no torch here.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from workers.model.lexicon import Lexicon, apply_known_values
from workers.model.scripts import joins_word

__all__ = ["Attribute", "ModelLabels", "decode_attributes", "decode_category", "decode_listing"]

_NEG_INF = -1e30
_EPS = 1e-12


@dataclass(frozen=True)
class Attribute:
    """One extracted value; ``value == text[start:end]``."""

    name: str
    value: str
    confidence: float
    start: int
    end: int


@dataclass(frozen=True)
class ModelLabels:
    """The label maps a model was trained with (``labels.json`` in the model directory), and the values of
    its training titles (``known_values``: a lexicon for `workers.model.lexicon`; empty in older models)."""

    tags: tuple[str, ...]
    categories: tuple[str, ...]
    attributes_by_category: dict[str, tuple[str, ...]]
    known_values: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.tags or self.tags[0] != "O":
            raise ValueError("labels.json: tags must start with 'O'")
        for tag in self.tags[1:]:
            if tag[:2] not in ("B-", "I-"):
                raise ValueError(f"labels.json: tag {tag!r} is neither O, B-<attr> nor I-<attr>")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelLabels:
        return cls(
            tags=tuple(data["tags"]),
            categories=tuple(data["categories"]),
            attributes_by_category={c: tuple(a) for c, a in data["attributes_by_category"].items()},
            known_values={
                name: {value: (str(spelling), int(count)) for value, (spelling, count) in values.items()}
                for name, values in data.get("known_values", {}).items()
            },
        )

    @classmethod
    def from_file(cls, path: Path | str) -> ModelLabels:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_attributes(
        cls,
        attributes: Sequence[str],
        attributes_by_category: dict[str, Sequence[str]],
        known_values: dict[str, dict[str, tuple[str, int]]] | None = None,
    ) -> ModelLabels:
        tags = ["O"]
        for name in attributes:
            tags += [f"B-{name}", f"I-{name}"]
        return cls(
            tags=tuple(tags),
            categories=tuple(sorted(attributes_by_category)),
            attributes_by_category={c: tuple(a) for c, a in sorted(attributes_by_category.items())},
            known_values=known_values or {},
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "tags": list(self.tags),
            "categories": list(self.categories),
            "attributes_by_category": {c: list(a) for c, a in self.attributes_by_category.items()},
        }
        if self.known_values:  # absent, not empty, so a model without one keeps its labels.json (and digest)
            data["known_values"] = {
                name: {value: list(entry) for value, entry in values.items()}
                for name, values in self.known_values.items()
            }
        return data

    @cached_property
    def lexicon(self) -> Lexicon:
        """The known values, indexed for decoding (`workers.model.lexicon`)."""
        return Lexicon(self.known_values)

    @property
    def tag_attributes(self) -> list[str | None]:
        """The attribute name of each tag (None for O)."""
        return [None if tag == "O" else tag[2:] for tag in self.tags]


def _transition_matrix(tags: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """BIO constraints as log-space scores: I-X only after B-X or I-X, and never first."""
    size = len(tags)
    trans = np.zeros((size, size), dtype=np.float64)
    start = np.zeros(size, dtype=np.float64)
    for j, tag in enumerate(tags):
        if tag.startswith("I-"):
            start[j] = _NEG_INF
            for i, prev in enumerate(tags):
                if prev[2:] != tag[2:] or prev == "O":
                    trans[i, j] = _NEG_INF
    return trans, start


_TRANSITIONS: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}
_INSIDE_PREDECESSORS: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _inside_predecessors(tags: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each I-X tag's index and its two allowed predecessors (B-X, I-X), lower index first."""
    inside = [j for j, tag in enumerate(tags) if tag.startswith("I-")]
    begin = [tags.index("B-" + tags[j][2:]) if "B-" + tags[j][2:] in tags else j for j in inside]
    pairs = [sorted(pair) for pair in zip(begin, inside, strict=True)]
    return (np.array(inside, dtype=np.int64), np.array([a for a, _ in pairs], dtype=np.int64),
            np.array([b for _, b in pairs], dtype=np.int64))  # fmt: skip


def _transitions(tags: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The cached transition matrix and start scores (fills ``_INSIDE_PREDECESSORS`` for ``tags`` too)."""
    if tags not in _TRANSITIONS:
        _TRANSITIONS[tags] = _transition_matrix(tags)
        _INSIDE_PREDECESSORS[tags] = _inside_predecessors(tags)
    return _TRANSITIONS[tags]


_BIO_RULES: dict[tuple[str, ...], tuple[list[bool], list[str | None]]] = {}


def _is_valid_bio(path: list[int], tags: tuple[str, ...]) -> bool:
    """True when no I-X starts the sequence or follows anything but B-X/I-X."""
    if tags not in _BIO_RULES:
        _BIO_RULES[tags] = ([t.startswith("I-") for t in tags], [None if t == "O" else t[2:] for t in tags])
    inside, attribute = _BIO_RULES[tags]
    previous: str | None = None
    for tag_id in path:
        if inside[tag_id] and attribute[tag_id] != previous:
            return False
        previous = attribute[tag_id]
    return True


def _viterbi(
    log_probs: np.ndarray, tags: tuple[str, ...], allowed_tags: _AllowedTags | None = None
) -> list[int]:
    """Most probable tag sequence that is valid BIO (a constrained decode; no learned transitions).

    The constraints only forbid transitions (no learned scores), so when the per-token argmax is already
    valid BIO it is the constrained optimum too: the usual case, and it skips the dynamic programme.
    Otherwise the programme runs on Python floats (:func:`_viterbi_floats`): a title has a few dozen
    tokens and tags, where numpy's per-call overhead costs more than the arithmetic. Inputs with NaN or
    infinities keep numpy's semantics (:func:`_viterbi_numpy`).

    With ``allowed_tags`` the programme runs on the allowed tags only, when that gives the same path:
    when no other tag's log-probability is above O's at any token, an other tag's score never exceeds
    O's (O follows anything; an other B-Z follows the same best as O, an other I-Z only its own, other,
    tags), and on a tie O, index 0, is the first maximum; so no other tag is ever a best predecessor or
    the final best, and the allowed tags' scores and choices are unchanged.
    """
    argmax_path: list[int] = log_probs.argmax(axis=1).tolist()
    if _is_valid_bio(argmax_path, tags):
        return argmax_path
    if allowed_tags is not None and (log_probs[:, allowed_tags.others].max(axis=1) <= log_probs[:, 0]).all():
        # straight to the programme: the restricted argmax is the full one (O wins ties), already invalid
        kept = allowed_tags.kept
        return [kept[j] for j in _viterbi_programme(log_probs[:, kept], allowed_tags.tags)]
    return _viterbi_programme(log_probs, tags)


def _viterbi_programme(log_probs: np.ndarray, tags: tuple[str, ...]) -> list[int]:
    if not np.isfinite(log_probs).all():
        return _viterbi_numpy(log_probs, tags)
    return _viterbi_floats(log_probs, tags)


_FLOAT_RULES: dict[tuple[str, ...], tuple[list[float], list[tuple[int, int, int]]]] = {}


def _viterbi_floats(log_probs: np.ndarray, tags: tuple[str, ...]) -> list[int]:
    """:func:`_viterbi_numpy` on Python floats: the same additions in the same order (float64 both), the
    same tie-breaks (the first maximum; for I-X the lower-index predecessor on a tie), so the same path.
    Needs finite ``log_probs`` (numpy's argmax and ``max`` differ on NaN)."""
    if tags not in _FLOAT_RULES:
        _, start_scores = _transitions(tags)
        inside, first, second = _INSIDE_PREDECESSORS[tags]
        _FLOAT_RULES[tags] = (
            start_scores.tolist(),
            list(zip(inside.tolist(), first.tolist(), second.tolist(), strict=True)),
        )
    start, inside_rules = _FLOAT_RULES[tags]
    rows: list[list[float]] = log_probs.tolist()
    score = [s + x for s, x in zip(start, rows[0], strict=True)]
    backs: list[list[int]] = []
    for row in rows[1:]:
        # O and B-X may follow any tag: the overall best; I-X only B-X or I-X: the better of the two
        best_score = max(score)
        back = [score.index(best_score)] * len(score)
        new_score = [best_score + x for x in row]
        for j, a, b in inside_rules:
            if score[a] >= score[b]:
                back[j], new_score[j] = a, score[a] + row[j]
            else:
                back[j], new_score[j] = b, score[b] + row[j]
        backs.append(back)
        score = new_score
    path = [score.index(max(score))]
    for back in reversed(backs):
        path.append(back[path[-1]])
    return path[::-1]


def _viterbi_numpy(log_probs: np.ndarray, tags: tuple[str, ...]) -> list[int]:
    """The constrained dynamic programme in numpy (any float input, NaN and infinities included)."""
    _, start = _transitions(tags)
    inside, first, second = _INSIDE_PREDECESSORS[tags]
    # O and B-X may follow any tag (best predecessor: the overall best); I-X only B-X or I-X (the better
    # of the two, the lower index on a tie, as an argmax over all predecessors would pick).
    score = start + log_probs[0]
    back = np.zeros(log_probs.shape, dtype=np.int64)
    for t in range(1, len(log_probs)):
        best = int(score.argmax())
        first_score, second_score = score[first], score[second]
        take_first = first_score >= second_score
        back[t] = best
        back[t, inside] = np.where(take_first, first, second)
        new_score = np.full_like(score, score[best])
        new_score[inside] = np.where(take_first, first_score, second_score)
        score = new_score + log_probs[t]
    path = [int(score.argmax())]
    for t in range(len(log_probs) - 1, 0, -1):
        path.append(int(back[t, path[-1]]))
    return path[::-1]


@dataclass(frozen=True)
class _AllowedTags:
    """The tags an ``allowed`` collection keeps (O and B-/I- of allowed attributes), in label order."""

    mask: np.ndarray  # [T] bool, read-only
    kept: list[int]  # indices of the kept tags (O, index 0, first)
    others: list[int]  # indices of the rest (non-empty)
    tags: tuple[str, ...]  # the kept tags


_ALLOWED_TAGS: dict[tuple[tuple[str, ...], Collection[str]], _AllowedTags | None] = {}
_ALLOWED_TAGS_LIMIT = 1024


def _allowed_tags(labels: ModelLabels, allowed: Collection[str] | None) -> _AllowedTags | None:
    """None when ``allowed`` is None or keeps every tag; cached per (tags, allowed) when hashable."""
    if allowed is None:
        return None
    key = (labels.tags, allowed)
    try:
        return _ALLOWED_TAGS[key]
    except KeyError:
        pass
    except TypeError:  # e.g. a set: not hashable
        return _make_allowed_tags(labels, allowed)
    if len(_ALLOWED_TAGS) >= _ALLOWED_TAGS_LIMIT:
        _ALLOWED_TAGS.clear()
    found = _ALLOWED_TAGS[key] = _make_allowed_tags(labels, allowed)
    return found


def _make_allowed_tags(labels: ModelLabels, allowed: Collection[str]) -> _AllowedTags | None:
    allowed_set = set(allowed)
    keep = [a is None or a in allowed_set for a in labels.tag_attributes]
    if all(keep):
        return None
    mask = np.array(keep, dtype=bool)
    mask.flags.writeable = False
    kept = [j for j, k in enumerate(keep) if k]
    return _AllowedTags(
        mask, kept, [j for j, k in enumerate(keep) if not k], tuple(labels.tags[j] for j in kept)
    )


def decode_attributes(
    text: str,
    offsets: Sequence[tuple[int, int]],
    tag_probs: np.ndarray,
    labels: ModelLabels,
    allowed: Collection[str] | None = None,
    *,
    method: str = "viterbi",
    one_per_attribute: bool = True,
    snap_to_words: bool = True,
) -> list[Attribute]:
    """Spans of consecutive B-X/I-X tokens become ``Attribute(X, text[start:end], confidence, start, end)``.

    ``offsets`` are the tokens' character spans (special tokens have (0, 0) and are skipped); ``tag_probs``
    is [S, T] with S >= len(offsets) (bucket padding is ignored). ``allowed`` restricts the attribute names
    (e.g. to those valid for the predicted category). ``method`` is "viterbi" (best valid BIO sequence) or
    "argmax" (per token; a stray I-X starts a span). With ``one_per_attribute`` only the most confident
    value of each attribute is kept. With ``snap_to_words`` a span that starts or ends inside a word (a word
    piece tagged alone, "Ass" of "Assorted") is widened to the whole word. Confidence is the mean probability
    of the span's tags.
    """
    if tag_probs.ndim != 2 or tag_probs.shape[1] != len(labels.tags):
        raise ValueError(f"tag_probs must be [S, {len(labels.tags)}], got {tag_probs.shape}")
    if tag_probs.shape[0] < len(offsets):
        raise ValueError(f"tag_probs has {tag_probs.shape[0]} rows for {len(offsets)} tokens")
    positions = [i for i, (s, e) in enumerate(offsets) if e > s]
    if not positions:
        return []
    first, last = positions[0], positions[-1]
    # content tokens are contiguous ([CLS] ... [SEP]): a slice, not a gather; never written to below
    rows = tag_probs[first : last + 1] if last - first + 1 == len(positions) else tag_probs[positions]
    probs = np.asarray(rows, dtype=np.float64)
    allowed_tags = _allowed_tags(labels, allowed)
    if allowed_tags is not None:
        probs = np.where(allowed_tags.mask, probs, 0.0)
    if method == "viterbi":
        path = _viterbi(np.log(probs + _EPS), labels.tags, allowed_tags)
    elif method == "argmax":
        path = probs.argmax(axis=1).tolist()
    else:
        raise ValueError(f"unknown decoding method {method!r} (viterbi or argmax)")
    found = _collect_spans(text, [offsets[i] for i in positions], probs, path, labels, one_per_attribute)
    return [_snap(text, a) for a in found] if snap_to_words else found


def _snap(text: str, attribute: Attribute) -> Attribute:
    """Widen to whole words; a Han ideograph is a word of its own (see ``workers.model.scripts``)."""
    start, end = attribute.start, attribute.end
    while start > 0 and joins_word(text[start - 1], text[start]):
        start -= 1
    while end < len(text) and joins_word(text[end - 1], text[end]):
        end += 1
    if (start, end) == (attribute.start, attribute.end):
        return attribute
    return Attribute(attribute.name, text[start:end], attribute.confidence, start, end)


def _collect_spans(
    text: str,
    offsets: Sequence[tuple[int, int]],
    probs: np.ndarray,
    path: Sequence[int],
    labels: ModelLabels,
    one_per_attribute: bool,
) -> list[Attribute]:
    tags = labels.tags
    if tags not in _BIO_RULES:
        _BIO_RULES[tags] = ([t.startswith("I-") for t in tags], [None if t == "O" else t[2:] for t in tags])
    inside, attribute = _BIO_RULES[tags]
    spans: list[list[Any]] = []  # [name, first position, last position]; a span's positions are consecutive
    for position, tag_id in enumerate(path):
        name = attribute[tag_id]
        if name is None:
            continue
        if inside[tag_id] and spans and spans[-1][0] == name and spans[-1][2] == position - 1:
            spans[-1][2] = position
        else:
            spans.append([name, position, position])
    if not spans:
        return []
    probability = probs.item  # probability(position, tag) as a Python float: no gather for a few values
    scored: list[tuple[str, float, int, int]] = []
    for name, first, last in spans:
        values = [probability(p, path[p]) for p in range(first, last + 1)]
        # np.mean sums 8+ values pairwise; below that a plain sum is the same arithmetic without the overhead
        confidence = sum(values) / len(values) if len(values) < 8 else float(np.mean(values))
        scored.append((name, confidence, offsets[first][0], offsets[last][1]))
    if one_per_attribute:
        best: dict[str, tuple[str, float, int, int]] = {}
        for span in scored:
            if span[0] not in best or span[1] > best[span[0]][1]:
                best[span[0]] = span
        scored = sorted(best.values(), key=lambda span: span[2])
    return [Attribute(name, text[start:end], conf, start, end) for name, conf, start, end in scored]


def decode_category(category_probs: np.ndarray, labels: ModelLabels) -> tuple[str, float]:
    """The most probable category and its probability."""
    if category_probs.ndim != 1 or category_probs.shape[0] != len(labels.categories):
        raise ValueError(f"category_probs must be [{len(labels.categories)}], got {category_probs.shape}")
    index = int(category_probs.argmax())
    return labels.categories[index], float(category_probs[index])


def decode_listing(
    text: str,
    offsets: Sequence[tuple[int, int]],
    tag_probs: np.ndarray,
    category_probs: np.ndarray,
    labels: ModelLabels,
    *,
    method: str = "viterbi",
    restrict_to_category: bool = True,
    snap_to_words: bool = True,
    one_per_attribute: bool = True,
    lexicon: Lexicon | None = None,
) -> tuple[str, float, list[Attribute]]:
    """One title: its category, then its attributes (restricted to the category's), then the known values
    (``lexicon``, `workers.model.lexicon`). The worker, `enrich predict`, evaluation and CV decode here."""
    category, confidence = decode_category(category_probs, labels)
    allowed = labels.attributes_by_category.get(category) if restrict_to_category else None
    attributes = decode_attributes(
        text,
        offsets,
        tag_probs,
        labels,
        allowed,
        method=method,
        one_per_attribute=one_per_attribute,
        snap_to_words=snap_to_words,
    )
    if lexicon is not None:
        attributes = apply_known_values(text, attributes, allowed, lexicon)
    return category, confidence, attributes
