# syntax=docker/dockerfile:1
# training-exporter: a Prometheus exporter sidecar for model-training jobs.
#
#     docker build -t training-exporter .
#     docker run --rm -v /path/to/logs:/logs:ro -p 9945:9945 training-exporter --log /logs/train.log
#
# No NVIDIA driver inside: NVML (libnvidia-ml.so.1) comes from the host's driver, mounted by the
# NVIDIA Container Toolkit when the container runs with the NVIDIA runtime (docker run --gpus all,
# or a Kubernetes node with the GPU operator / device plugin). Without it the gpu collector
# reports itself unavailable and the rest works.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Build a wheel of the exporter and of its dependencies, so the final image needs no build tools.
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

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

# Nothing is written at run time (the root filesystem may be read-only): no bytecode caches,
# unbuffered logs to stderr.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=utility

# Install from the build stage's wheels without copying them into a layer; compile the bytecode
# now, since it cannot be written later.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/training_exporter-*.whl \
    && python -m compileall -q "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && groupadd --system --gid 10001 exporter \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --no-log-init --shell /usr/sbin/nologin exporter \
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
