#!/usr/bin/env bash
# Triton's perf_analyzer, fetched on demand and cached: prints the path of a wrapper that runs it.
#
# The `perf-analyzer` name on PyPI is a placeholder; the binary ships in the tritonclient 2.41.1
# manylinux wheel (bin/perf_analyzer). It links two libraries the wheel lacks: libb64.so.0d (Debian's
# libb64-0d: used when installed, else its .deb is fetched with `apt-get download` and unpacked with
# `dpkg -x`, no root needed) and libcudart.so.12 (the nvidia-cuda-runtime-cu12 wheel; loaded even when
# only CPU models are measured). Everything lands in $ENRICH_CACHE_DIR/perf_analyzer-2.41.1.
#
#   devtools/bench/perf_analyzer.sh            -> /…/.cache/perf_analyzer-2.41.1/perf_analyzer
#   "$(devtools/bench/perf_analyzer.sh)" -m attribute_extractor -u 127.0.0.1:8001 -i grpc -b 32 …
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${ENRICH_CACHE_DIR:-$ROOT/.cache}"
PYTHON="${PYTHON:-python3}"
DIR="$CACHE/perf_analyzer-2.41.1"
WRAPPER="$DIR/perf_analyzer"

if [ ! -x "$WRAPPER" ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  echo "perf_analyzer: fetching tritonclient 2.41.1, nvidia-cuda-runtime-cu12 and libb64 into $DIR" >&2
  "$PYTHON" -m pip download --quiet --no-deps -d "$work" tritonclient==2.41.1 nvidia-cuda-runtime-cu12==12.9.79 >&2
  mkdir -p "$work/x" "$DIR/bin" "$DIR/lib"
  for wheel in "$work"/*.whl; do "$PYTHON" -m zipfile -e "$wheel" "$work/x" >&2; done
  cp "$work"/x/tritonclient-2.41.1.data/data/bin/perf_analyzer "$DIR/bin/perf_analyzer"
  chmod +x "$DIR/bin/perf_analyzer"
  cp "$work"/x/nvidia/cuda_runtime/lib/libcudart.so.12 "$DIR/lib/"
  if ! ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then
    (cd "$work" && apt-get download libb64-0d >&2)
    dpkg -x "$work"/libb64-0d_*.deb "$work/b64"
    cp "$work"/b64/usr/lib/*/libb64.so.0d "$DIR/lib/"
  fi
  cat > "$WRAPPER.tmp" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$DIR/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$DIR/bin/perf_analyzer" "\$@"
WRAP
  chmod +x "$WRAPPER.tmp"
  mv "$WRAPPER.tmp" "$WRAPPER"  # last: a run interrupted before this fetches again
fi
echo "$WRAPPER"
