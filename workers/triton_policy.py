"""The Triton version policy `enrich rollout` makes Triton serve, written into the repository's config.pbtxt.

`triton_load` (workers.rollout) passes its `specific` version policy as a load override, which lives only
in the running server: a restarted Triton (pod restart, crash) reads config.pbtxt again, and without a
policy there Triton's default (`latest { num_versions: 1 }`) serves only the newest version directory,
which is not the one the workers call after a rollback, or while a newer export is not yet promoted.
So every successful load also writes the policy into the file, on one marked line:

    version_policy: { specific: { versions: [1, 2] } }  # enrich rollout: the versions the workers call

Only that line changes; the rest of the file (comments, `enrich export`'s digest parameters) stays byte for
byte. `enrich export` rewrites only the `"model_digest` lines and keeps this one, so a new export is not
served until a rollout loads it. A user's own `version_policy` (one line or a brace-balanced block) is
replaced by the marked line; any edit whose result does not parse to the expected config falls back to
rewriting the whole file with protobuf's text_format (comments lost: the caller says so).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["MARK", "policy_line", "with_version_policy", "without_version_policy", "write_atomically",
           "write_version_policy"]  # fmt: skip

MARK = "# enrich rollout: the versions the workers call"
ADDED, REPLACED, UNCHANGED, REWRITTEN = "added", "replaced", "unchanged", "rewritten"


def policy_line(versions: Iterable[int]) -> str:
    listed = ", ".join(str(v) for v in sorted(versions))
    return f"version_policy: {{ specific: {{ versions: [{listed}] }} }}  {MARK}"


def _parse(text: str) -> object:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _is_marked(line: str) -> bool:
    return line.lstrip().startswith("version_policy") and line.rstrip().endswith(MARK)


def _policy_span(lines: list[str]) -> tuple[int, int] | None:
    """[start, end) of the lines holding the top-level `version_policy` (ours first, else the one that
    starts a line; its braces counted outside `#` comments). None when no line starts one."""
    starts = [i for i, line in enumerate(lines) if _is_marked(line)] or \
        [i for i, line in enumerate(lines) if line.lstrip().startswith("version_policy")]  # fmt: skip
    if len(starts) != 1:
        return None
    depth, opened = 0, False
    for end in range(starts[0], len(lines)):
        code = lines[end].split("#", 1)[0]
        depth += code.count("{") - code.count("}")
        opened = opened or "{" in code
        if opened and depth <= 0:
            return starts[0], end + 1
    return None


def with_version_policy(text: str, versions: Iterable[int]) -> tuple[str, str]:
    """`text` (a config.pbtxt) serving exactly `versions`: (the new text, ADDED / REPLACED / UNCHANGED /
    REWRITTEN). Every edited text is parsed and compared with the expected config before it is returned."""
    from google.protobuf import text_format

    wanted = sorted(set(versions))
    config = _parse(text)
    expected = type(config)()
    expected.CopyFrom(config)
    expected.ClearField("version_policy")
    expected.version_policy.specific.versions[:] = wanted
    line = policy_line(wanted)
    lines = text.splitlines(keepends=True)
    span = _policy_span(lines)
    if span is not None:
        start, end = span
        ending = lines[end - 1][len(lines[end - 1].rstrip("\r\n")):]
        candidate, how = "".join([*lines[:start], line + ending, *lines[end:]]), REPLACED
    elif not config.HasField("version_policy"):
        candidate, how = text + ("" if not text or text.endswith("\n") else "\n") + line + "\n", ADDED
    else:  # a policy that does not start a line (or several): no text edit to trust
        candidate, how = "", REWRITTEN
    if candidate == text:
        return text, UNCHANGED
    if how != REWRITTEN:
        try:
            if _parse(candidate) == expected:
                return candidate, how
        except text_format.ParseError:
            pass
    return text_format.MessageToString(expected), REWRITTEN


def without_version_policy(text: str) -> str:
    """`text` without our marked line (a template copied into a fresh repository: its versions differ)."""
    return "".join(line for line in text.splitlines(keepends=True) if not _is_marked(line))


def write_atomically(path: Path, text: str) -> None:
    """A temporary file in the same folder, then os.replace: a Triton (re)starting meanwhile reads the old
    file or the new one, never half of one. The file keeps its permission bits."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_version_policy(config_path: Path, versions: Iterable[int]) -> list[str]:
    """Write `versions` as the version policy of `config_path`; the lines to print (none when the marked
    line was added, replaced or already right)."""
    text = config_path.read_bytes().decode("utf-8")
    new_text, how = with_version_policy(text, versions)
    if how == UNCHANGED:
        return []
    try:
        write_atomically(config_path, new_text)
    except OSError as exc:
        return [f"could not write the version policy into {config_path} ({exc.strerror or exc}): a restarted "
                "Triton will load only the version policy written there (by default the newest version)"]
    if how == REWRITTEN:
        return [f"{config_path}: its own version_policy could not be replaced in place; the file was "
                "rewritten with protobuf text_format (its comments dropped)"]
    return []
