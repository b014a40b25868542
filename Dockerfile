# training-exporter: a Prometheus exporter sidecar for model-training jobs.
#
#     docker build -t training-exporter .
#     docker run --rm -v /path/to/logs:/logs:ro -p 9945:9945 training-exporter --log /logs/train.log
#
# Builds with Docker (with or without BuildKit), buildah and podman: no `# syntax` line (BuildKit
# would fetch that frontend) and no `RUN --mount` (the classic builder lacks it). It fetches the
# base image, the Python packages and, in the build stage, a C compiler from the base's Debian
# release.
# buildah and podman write OCI images by default, which have no HEALTHCHECK: build with
# `--format docker` to keep it.
#
# No NVIDIA driver inside: NVML (libnvidia-ml.so.1) comes from the host's driver, mounted by the
# NVIDIA Container Toolkit when the container runs with the NVIDIA runtime (docker run --gpus all,
# or a Kubernetes node with the GPU operator / device plugin). Without it the gpu collector
# reports itself unavailable and the rest works.

# Any Debian-like image with python3 and its venv module (python3-venv on Debian itself).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Install the exporter and its dependencies into a virtual environment, which the final stage
# copies whole (pip removed from it): no wheels or build tools in the final image, and the same
# steps whether the base's pip is the official image's or Debian's (which refuses to install
# outside a venv).
#
# The wheel's reading path (the modules every log line goes through) is compiled with mypyc
# (build_backend.py): the same source as C extensions, a third fewer instructions per line. That
# needs a C compiler and the Python headers here, in the build stage only. `--build-arg
# TRAINING_EXPORTER_COMPILE=0` builds the source alone; training_exporter_build_info's
# reading_path label says which an image holds.
FROM ${PYTHON_IMAGE} AS build
ARG TRAINING_EXPORTER_COMPILE=1
# The build stage's packages are whatever the base's release has now (the final stage has none
# of them): pinning Debian's versions would break the build each time the mirror moves on.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev python3-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py build_backend.py MANIFEST.in README.md LICENSE ./
COPY exporter ./exporter
RUN python3 -m venv /opt/training-exporter \
    && /opt/training-exporter/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && /opt/training-exporter/bin/pip install --no-cache-dir /wheels/training_exporter-*.whl \
    && /opt/training-exporter/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="training-exporter" \
      org.opencontainers.image.description="Prometheus exporter sidecar for model-training jobs: training logs, GPUs (NVML), host and process." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/training-exporter/training-exporter" \
      org.opencontainers.image.documentation="https://github.com/training-exporter/training-exporter/blob/main/docs/deployment.md"

# Nothing is written at run time (the root filesystem may be read-only): no bytecode caches (pip
# compiled it at install), unbuffered logs to stderr. The revision shows in
# training_exporter_build_info.
ENV PATH=/opt/training-exporter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_DRIVER_CAPABILITIES=utility \
    TRAINING_EXPORTER_REVISION=${REVISION}

COPY --from=build /opt/training-exporter /opt/training-exporter
RUN groupadd --gid 10001 exporter \
    && useradd --uid 10001 --gid 10001 --no-create-home --no-log-init --shell /usr/sbin/nologin exporter \
    && mkdir /logs && chown exporter:exporter /logs

# A numeric user, so Kubernetes can check runAsNonRoot without knowing the name.
USER 10001:10001
WORKDIR /logs
EXPOSE 9945

# No curl in the slim image: ask the exporter itself. Assumes the default listen address.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9945/-/healthy', timeout=4).status != 200)"]

ENTRYPOINT ["training-exporter"]
CMD ["--log", "/logs/*.log"]
