# The tools image of docker-compose.yml: the training and views extras on top of the worker package, for
# the model-init step (deploy/model-init.sh: train + export the tiny model on a fresh clone) and the
# Faust views (`enrich views`). Never deployed next to the workers (their image is deploy/Dockerfile).
# torch from the default index is the CUDA build (several GB); a CPU-only wheel index, if you have one,
# can be given with --build-arg PIP_EXTRA_INDEX_URL=... to shrink it.
# Build from the repository root:  docker build -f deploy/tools.Dockerfile -t enrich-tools .
FROM python:3.11-slim

ARG PIP_EXTRA_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1

WORKDIR /work
COPY pyproject.toml README.md ./
COPY workers workers
COPY training training
COPY views views
COPY devtools devtools
RUN pip install ${PIP_EXTRA_INDEX_URL:+--extra-index-url "$PIP_EXTRA_INDEX_URL"} ".[training,views]"
ENTRYPOINT ["enrich"]
