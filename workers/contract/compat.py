"""Published-schema lock: a published version is frozen except for annotations and new optional properties.

`schemas/published.json` (next to this module) holds, per contract and version, the canonical JSON of the
schema as it was published and its sha256. `check_published()` compares every schema file with its
published snapshot and reports each change that could break a producer or a consumer:

- a property removed or renamed, or a required property no longer required (consumers rely on it);
- a new required property (old producers do not send it);
- any change to a validation keyword (type, enum, const, bounds, lengths, pattern, format,
  additionalProperties ...), so types can neither narrow for producers nor widen for consumers.

Changes to annotations (title, description, examples, $comment) and new optional properties are
compatible; they need a re-publish (`python -m workers.contract.compat --publish`) so the lock hash matches.
A breaking change needs a new version file (e.g. `listing.v2.json`) instead.

Run `python -m workers.contract.compat` to check, `--publish` to add new versions or record compatible
changes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA_DIR",
    "breaking_changes",
    "check_published",
    "publish",
    "schema_files",
]

# The source tree's schema folder: `--publish` rewrites its lock file.
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
LOCK_FILE = SCHEMA_DIR / "published.json"
_FILE_NAME = re.compile(r"^(?P<name>[a-z][a-z0-9-]*)\.v(?P<version>\d+)\.json$")
ANNOTATIONS = frozenset({"title", "description", "examples", "$comment", "$id", "$schema", "default"})


def schema_files(schema_dir: Path = SCHEMA_DIR) -> dict[tuple[str, str], Path]:
    """`(name, version) -> path` for every `<name>.v<version>.json` in the schema folder."""
    found: dict[tuple[str, str], Path] = {}
    for path in sorted(schema_dir.glob("*.v*.json")):
        match = _FILE_NAME.match(path.name)
        if match:
            found[(match["name"], match["version"])] = path
    return found


def canonical(schema: Any) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_of(schema: Any) -> str:
    return hashlib.sha256(canonical(schema).encode()).hexdigest()


def breaking_changes(old: Any, new: Any, where: str = "$") -> list[str]:
    """Every change from `old` to `new` that can break a producer or a consumer of the published version."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [] if old == new else [f"{where}: changed from {old!r} to {new!r}"]
    problems: list[str] = []
    old_props: dict[str, Any] = old.get("properties", {})
    new_props: dict[str, Any] = new.get("properties", {})
    for name, old_sub in old_props.items():
        if name not in new_props:
            problems.append(f"{where}.properties.{name}: property removed or renamed")
        else:
            problems += breaking_changes(old_sub, new_props[name], f"{where}.properties.{name}")
    old_required = set(old.get("required", []))
    new_required = set(new.get("required", []))
    problems += [f"{where}: new required property {name!r}" for name in sorted(new_required - old_required)]
    problems += [
        f"{where}: property {name!r} no longer required (consumers rely on it)"
        for name in sorted(old_required - new_required)
    ]
    for key in sorted((set(old) | set(new)) - ANNOTATIONS - {"properties", "required"}):
        if key not in new:
            problems.append(f"{where}.{key}: constraint removed (was {old[key]!r})")
        elif key not in old:
            problems.append(f"{where}.{key}: constraint added ({new[key]!r})")
        elif isinstance(old[key], dict) and isinstance(new[key], dict):
            problems += breaking_changes(old[key], new[key], f"{where}.{key}")
        elif old[key] != new[key]:
            problems.append(f"{where}.{key}: changed from {old[key]!r} to {new[key]!r}")
    return problems


def _load_lock(lock_file: Path) -> dict[str, dict[str, dict[str, Any]]]:
    if not lock_file.exists():
        return {}
    return json.loads(lock_file.read_text(encoding="utf-8"))


def check_published(schema_dir: Path = SCHEMA_DIR, lock_file: Path | None = None) -> list[str]:
    """Problems with the published versions: missing files, breaking changes, stale lock hashes."""
    lock = _load_lock(lock_file or schema_dir / "published.json")
    files = schema_files(schema_dir)
    problems: list[str] = []
    for name, versions in sorted(lock.items()):
        for version, entry in sorted(versions.items()):
            label = f"{name} v{version}"
            path = files.get((name, version))
            if path is None:
                problems.append(f"{label}: published but its file {name}.v{version}.json is gone")
                continue
            current = json.loads(path.read_text(encoding="utf-8"))
            if sha256_of(current) == entry["sha256"]:
                continue
            breaking = breaking_changes(entry["schema"], current)
            if breaking:
                problems += [
                    f"{label}: breaking change {item}; publish a new version instead" for item in breaking
                ]
            else:
                problems.append(
                    f"{label}: compatible change not yet recorded; "
                    "run `python -m workers.contract.compat --publish`"
                )
    return problems


def publish(schema_dir: Path = SCHEMA_DIR, lock_file: Path | None = None) -> list[str]:
    """Record every schema file in the lock; refuses (raises ValueError) when a change would break."""
    lock_path = lock_file or schema_dir / "published.json"
    breaking = [p for p in check_published(schema_dir, lock_path) if "breaking change" in p or "is gone" in p]
    if breaking:
        raise ValueError("refusing to publish:\n" + "\n".join(breaking))
    lock = _load_lock(lock_path)
    recorded: list[str] = []
    for (name, version), path in schema_files(schema_dir).items():
        schema = json.loads(path.read_text(encoding="utf-8"))
        entry = {"sha256": sha256_of(schema), "schema": schema}
        if lock.get(name, {}).get(version, {}).get("sha256") != entry["sha256"]:
            lock.setdefault(name, {})[version] = entry
            recorded.append(f"{name} v{version}")
    lock_path.write_text(
        json.dumps(lock, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return recorded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.contract.compat", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--publish", action="store_true", help="record new versions / compatible changes")
    args = parser.parse_args(argv)
    if args.publish:
        try:
            recorded = publish()
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 1
        print("published: " + (", ".join(recorded) or "nothing new"))
        return 0
    problems = check_published()
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
