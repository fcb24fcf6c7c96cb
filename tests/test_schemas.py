"""The JSON Schema contracts: examples validate, published versions are frozen against breaking changes."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import fastjsonschema
import pytest

from workers.contract.compat import SCHEMA_DIR, breaking_changes, check_published, publish, schema_files

CONTRACTS = ("listing", "listing-attributes", "dead-letter")


def _schema(name: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{name}.v1.json").read_text())


@pytest.mark.parametrize("name", CONTRACTS)
def test_valid_example_matches_its_schema(name: str) -> None:
    example = json.loads((SCHEMA_DIR / "examples" / f"{name}.v1.valid.json").read_text())
    fastjsonschema.compile(_schema(name))(example)


@pytest.mark.parametrize("path", sorted((SCHEMA_DIR / "examples").glob("listing.v1.invalid-*.json")))
def test_invalid_listing_examples_are_rejected(path: Path) -> None:
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        fastjsonschema.compile(_schema("listing"))(json.loads(path.read_text()))


def test_every_schema_states_limits_and_is_published() -> None:
    assert set(schema_files()) == {(name, "1") for name in CONTRACTS}
    assert _schema("listing")["x-max-payload-bytes"] > 0
    assert _schema("listing")["properties"]["title"]["maxLength"] == 512
    assert check_published() == []


def test_annotation_changes_and_new_optional_properties_are_compatible() -> None:
    old = _schema("listing")
    new = copy.deepcopy(old)
    new["description"] = "reworded"
    new["properties"]["title"]["description"] = "reworded too"
    new["properties"]["brand_hint"] = {"type": "string", "maxLength": 64}
    assert breaking_changes(old, new) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s["properties"].pop("locale"), "property removed or renamed"),
        (lambda s: s["properties"].__setitem__("name", s["properties"].pop("title")), "title: property remo"),
        (lambda s: s["properties"]["listing_version"].__setitem__("type", "string"), "type: changed"),
        (lambda s: s["properties"]["description"].__setitem__("type", "string"), "type: changed"),
        (lambda s: s["properties"]["title"].__setitem__("maxLength", 256), "maxLength: changed"),
        (lambda s: s["required"].append("locale"), "new required property 'locale'"),
        (lambda s: s["required"].remove("event_time"), "no longer required"),
        (lambda s: s.__setitem__("additionalProperties", False), "additionalProperties: changed"),
        (lambda s: s["properties"]["marketplace"].__setitem__("enum", ["US"]), "enum: constraint added"),
    ],
)
def test_breaking_changes_are_refused(change, expected: str) -> None:
    old = _schema("listing")
    new = copy.deepcopy(old)
    change(new)
    problems = breaking_changes(old, new)
    assert any(expected in p for p in problems), problems


def test_nested_breaking_change_in_output_schema_is_found() -> None:
    old = _schema("listing-attributes")
    new = copy.deepcopy(old)
    new["properties"]["attributes"]["items"]["properties"].pop("source_field")
    assert any("items.properties.source_field" in p for p in breaking_changes(old, new))


def test_checker_refuses_an_edited_published_file_and_publish_refuses_too(tmp_path: Path) -> None:
    for path in SCHEMA_DIR.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    edited = json.loads((tmp_path / "listing.v1.json").read_text())
    edited["properties"]["listing_id"]["maxLength"] = 64
    (tmp_path / "listing.v1.json").write_text(json.dumps(edited))
    problems = check_published(tmp_path)
    assert problems and all("breaking change" in p for p in problems)
    with pytest.raises(ValueError, match="refusing to publish"):
        publish(tmp_path)


def test_publish_records_new_versions_and_compatible_changes(tmp_path: Path) -> None:
    for path in SCHEMA_DIR.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    v2 = _schema("listing")
    v2["required"].append("locale")  # breaking, hence a new version file
    (tmp_path / "listing.v2.json").write_text(json.dumps(v2))
    edited = _schema("dead-letter")
    edited["description"] = "clarified"
    (tmp_path / "dead-letter.v1.json").write_text(json.dumps(edited))
    assert any("not yet recorded" in p for p in check_published(tmp_path))
    assert sorted(publish(tmp_path)) == ["dead-letter v1", "listing v2"]
    assert check_published(tmp_path) == []
