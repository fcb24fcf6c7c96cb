"""The Kafka broker jars: fetched once from Maven Central with `mvn`, cached under .cache/kafka/<version>/.

Version choice (measured on this project's machine, Nov 2026): **Kafka 4.1.1**. Kafka 4.0 dropped the
protocol versions older than Kafka 2.1 (KIP-896), so both Python clients were checked against a 4.1.1
broker before pinning it: confluent-kafka 2.16 (librdkafka) and aiokafka 0.14 (Faust's client) both
produce, consume, commit and resume as a consumer group and use transactions (read_committed hides
aborted records) — tests/test_services_kafka.py proves this on every run, with both clients. A Faust
0.15.3 app (topic creation through its own CreateTopics call, leader assignor, table changelog recovery,
agent) also ran on it. 3.9.x was kept as the fallback and was not needed.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

from devtools.paths import CACHE_DIR
from devtools.services.process import ServiceError

__all__ = ["KAFKA_VERSION", "POM_PATH", "cache_root", "ensure_kafka_libs", "find_java"]

KAFKA_VERSION = "4.1.1"
POM_PATH = Path(__file__).with_name("kafka-pom.xml")
_COMPLETE_MARKER = ".complete"
_MAVEN_TIMEOUT_S = 900


def cache_root() -> Path:
    """`$ENRICH_CACHE_DIR`, else `<repo>/.cache` (git-ignored)."""
    override = os.environ.get("ENRICH_CACHE_DIR")
    return Path(override) if override else CACHE_DIR


def find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise ServiceError("No `java` found (JDK >= 17 needed for Kafka). Run `make setup` "
                           "(scripts/bootstrap.sh installs openjdk-17-jre-headless).")
    return java


def ensure_kafka_libs(version: str = KAFKA_VERSION, cache_dir: Path | None = None) -> Path:
    """Return the folder of Kafka's runtime jars, fetching them with Maven on first use.

    Safe when several processes start at once: one holds a file lock and fetches into a temporary
    folder that is renamed into place only when complete; the others wait and reuse it.
    """
    base = (cache_dir or cache_root()) / "kafka" / version
    libs = base / "libs"
    if (libs / _COMPLETE_MARKER).exists():
        return libs
    base.mkdir(parents=True, exist_ok=True)
    with (base / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (libs / _COMPLETE_MARKER).exists():
            return libs
        _fetch_with_maven(version, base)
    return libs


def _fetch_with_maven(version: str, base: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError("No `mvn` found: Maven fetches the Kafka jars on first use. Run `make setup` "
                           "(scripts/bootstrap.sh installs maven).")
    staging = base / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    argv = [mvn, "-q", "-B", "-f", str(POM_PATH), "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}", "-DincludeScope=runtime", f"-Dkafka.version={version}"]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=_MAVEN_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"Maven did not fetch Kafka {version} within {_MAVEN_TIMEOUT_S} s") from exc
    jars = list(staging.glob("kafka_2.13-*.jar"))
    if result.returncode != 0 or not jars:
        output = (result.stdout + result.stderr)[-4000:]
        raise ServiceError(f"Fetching Kafka {version} with Maven failed (exit {result.returncode}): "
                           f"{' '.join(argv)}\n{output}")
    (staging / _COMPLETE_MARKER).write_text(version + "\n")
    shutil.rmtree(base / "libs", ignore_errors=True)
    staging.rename(base / "libs")
