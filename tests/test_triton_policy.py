"""The version policy `enrich rollout` writes into a Triton repository's config.pbtxt (workers.triton_policy):
the text edit, the atomic write, and `enrich export`'s digest rewrite keeping it. Pure logic, no server."""

from __future__ import annotations

import errno
import json
import stat
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from devtools.paths import TRITON_CPU_REPO
from training.export import CPU_MODEL_NAME, write_digest_parameters
from workers import triton_policy
from workers.triton_policy import (
    ADDED,
    MARK,
    REPLACED,
    REWRITTEN,
    UNCHANGED,
    policy_line,
    with_version_policy,
    without_version_policy,
    write_version_policy,
)

TEMPLATE = (TRITON_CPU_REPO / CPU_MODEL_NAME / "config.pbtxt").read_text()
DIGESTS = 'parameters: { key: "model_digest_v1" value: { string_value: "sha256:aa" } }\n'


def parsed(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def served(text: str) -> list[int]:
    config = parsed(text)
    assert config.version_policy.WhichOneof("policy_choice") == "specific", text
    return list(config.version_policy.specific.versions)


def without_policy(text: str) -> model_config_pb2.ModelConfig:
    config = parsed(text)
    config.ClearField("version_policy")
    return config


def test_adds_one_marked_line_and_keeps_the_rest_byte_for_byte() -> None:
    text, how = with_version_policy(TEMPLATE + DIGESTS, [2, 1])
    assert how == ADDED
    assert text == TEMPLATE + DIGESTS + policy_line([1, 2]) + "\n"
    assert text.splitlines()[-1].endswith(MARK)
    assert served(text) == [1, 2] and without_policy(text) == parsed(TEMPLATE + DIGESTS)
    # A file without a final newline gets one before the line.
    assert with_version_policy("max_batch_size: 8", [3]) == (f"max_batch_size: 8\n{policy_line([3])}\n",
                                                             ADDED)


def test_replaces_only_its_own_line_and_leaves_an_unchanged_file_alone() -> None:
    first, _ = with_version_policy(f"{MARK} (a comment quoting the mark is no policy)\n{TEMPLATE}", [1, 2])
    # An export rewrote the digest parameters after it (its lines go to the end).
    exported = first + DIGESTS
    text, how = with_version_policy(exported, [2])
    assert how == REPLACED and served(text) == [2]
    assert text == exported.replace(policy_line([1, 2]), policy_line([2]))
    assert with_version_policy(text, [2]) == (text, UNCHANGED)


@pytest.mark.parametrize("policy", [
    "version_policy: { latest: { num_versions: 2 } }\n",
    "version_policy {  # the newest two\n  latest { num_versions: 2 }\n}\n",
    "version_policy: {\n  specific: { versions: [ 1 ] }\n}\n",
])  # fmt: skip
def test_replaces_the_users_own_policy_in_place(policy: str) -> None:
    head, tail = TEMPLATE.split("dynamic_batching", 1)
    original = f"{head}{policy}dynamic_batching{tail}"
    text, how = with_version_policy(original, [1, 3])
    assert how == REPLACED and served(text) == [1, 3]
    assert text == f"{head}{policy_line([1, 3])}\ndynamic_batching{tail}"  # comments and order kept
    assert without_policy(text) == without_policy(original)


def test_a_policy_it_cannot_edit_in_place_is_rewritten_with_text_format() -> None:
    original = "# user comment\nname: \"m\" max_batch_size: 8 version_policy { all {} }\n"
    text, how = with_version_policy(original, [4])
    assert how == REWRITTEN and served(text) == [4]
    assert without_policy(text) == without_policy(original) and "# user comment" not in text


def test_write_version_policy_replaces_the_file_atomically(tmp_path: Path) -> None:
    config_path = tmp_path / "config.pbtxt"
    config_path.write_text(TEMPLATE)
    config_path.chmod(0o640)
    assert write_version_policy(config_path, [1, 2]) == []
    assert served(config_path.read_text()) == [1, 2]
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["config.pbtxt"]  # no temporary file left
    rewritten = tmp_path / "other" / "config.pbtxt"
    rewritten.parent.mkdir()
    rewritten.write_text('name: "m" version_policy { all {} } max_batch_size: 8\n')
    (line,) = write_version_policy(rewritten, [1])
    assert str(rewritten) in line and "text_format" in line and served(rewritten.read_text()) == [1]


def test_an_unwritable_repository_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path = tmp_path / "config.pbtxt"
    config_path.write_text(TEMPLATE)

    def refused(**_: object) -> tuple[int, str]:  # the tests run as root, for whom chmod refuses nothing
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(triton_policy.tempfile, "mkstemp", refused)
    (line,) = write_version_policy(config_path, [1, 2])
    assert str(config_path) in line and "restarted Triton will load only" in line
    assert "Permission denied" in line
    assert config_path.read_text() == TEMPLATE


def test_export_keeps_the_marked_line_and_templates_drop_it(tmp_path: Path) -> None:
    """An export that adds version 2 rewrites the digests and keeps the policy: 2 is not served until a
    rollout loads it."""
    model_root = tmp_path / CPU_MODEL_NAME
    for version, digest in ((1, "sha256:aa"), (2, "sha256:bb")):
        (model_root / str(version)).mkdir(parents=True)
        (model_root / str(version) / "model.onnx").write_bytes(b"")
        (model_root / str(version) / "model_info.json").write_text(json.dumps({"digest": digest}))
    config_path = model_root / "config.pbtxt"
    config_path.write_text(with_version_policy(TEMPLATE, [1])[0])
    write_digest_parameters(model_root)
    text = config_path.read_text()
    assert served(text) == [1] and text.count(MARK) == 1
    assert parsed(text).parameters["model_digest"].string_value == "sha256:bb"
    assert without_version_policy(text) == text.replace(policy_line([1]) + "\n", "")
    assert not parsed(without_version_policy(text)).HasField("version_policy")
