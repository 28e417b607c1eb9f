# The dyn-adapter serving image: FastAPI + onnxruntime (+ OpenVINO for int8/fp32 IR on the CPU), no
# torch and no timm (SPEC §2).
# One image for CPU and GPU: onnxruntime-gpu falls back to CPU when no GPU is visible, and with
# WITH_CUDA_LIBS=1 it carries the CUDA and cuDNN libraries from PyPI, so `--gpus all` needs nothing
# on the host but the NVIDIA driver (>= 580: onnxruntime-gpu 1.31 is built against CUDA 13).
#
#   docker build -t dynadapter .                                   # CPU + GPU, the DINOv2 demo model
#   docker build --build-arg WITH_CUDA_LIBS=0 -t dynadapter:cpu .   # CPU only, ~2.2 GB smaller
#   docker build --build-arg DEMO=tiny -t dynadapter:tiny .         # the tiny fixture: no torch in the build
#
# Works with Docker (BuildKit) and with podman/buildah (`podman build --format docker`, which keeps
# the HEALTHCHECK). See docker/README.md.

# The base must provide `python3` (3.11 or newer: onnxruntime-gpu 1.31 needs it) with venv and a
# glibc that manylinux_2_28 wheels accept. Builder and runtime use the same base, so the venv's
# interpreter link (/usr/local/bin/python3 in python:*-slim, /usr/bin/python3 in Debian) holds.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

# ORT_DISABLE_TELEMETRY: neither the server nor the export in the model builder sends onnxruntime's
# usage events (it would also try to keep a device id in a home directory the service user lacks,
# and warn at every start).
FROM ${BASE_IMAGE} AS base
ENV ORT_DISABLE_TELEMETRY=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    LANG=C.UTF-8

# Only pyproject.toml and docker/serve.lock decide the dependency layers: the requirement lists are files that stay
# byte-identical when anything else in pyproject.toml (version, dev extra) changes, so the
# COPY --from below hits the cache and the large pip install layers are reused.
FROM base AS requirements
ARG WITH_CUDA_LIBS=1
COPY pyproject.toml docker/requirements.py docker/serve.lock /build/
RUN cd /build \
 && python3 requirements.py pyproject.toml --extras serve $([ "$WITH_CUDA_LIBS" = 1 ] && echo --cuda-libs) > serve.txt \
 && python3 requirements.py pyproject.toml --extras serve,train > train.txt \
 && python3 requirements.py pyproject.toml --build-system > build.txt \
 && rm pyproject.toml requirements.py

# The runtime venv: third-party wheels only, from the serve extra, each at its version in docker/serve.lock.
FROM base AS builder
# Set where TLS to the package index is intercepted, with the proxy's CA bundle mounted into the
# build (docker/smoke.sh does this); unset, pip uses its own CA bundle.
ARG PIP_CERT
COPY --from=requirements /build/serve.txt /build/serve.lock /build/
RUN --mount=type=cache,target=/root/.cache \
    python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --requirement /build/serve.txt --constraint /build/serve.lock

# The project itself as a wheel, rebuilt on every code change (seconds). Apart from the runtime
# venv, so BuildKit builds the two in parallel and the build backend stays out of the image.
FROM base AS app
ARG PIP_CERT
COPY --from=requirements /build/build.txt /build/
RUN --mount=type=cache,target=/root/.cache \
    python3 -m venv /opt/build \
 && /opt/build/bin/pip install --requirement /build/build.txt
COPY pyproject.toml setup.py README.m[d] /src/
COPY dynadapter /src/dynadapter
COPY models /src/models
COPY training /src/training
COPY export /src/export
COPY service /src/service
COPY bench /src/bench
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels /src

# The model repository baked into the image (/models), by build argument DEMO:
#   dinov2  the DINOv2 ViT-S demo (default), exported here by `dynadapter demo build`: this stage
#           installs torch and timm, and only its /models reaches the runtime image.
#   tiny    the committed demo/model_repo (the small fixture; needs nothing but the build context)
# Selected with a shell `case` rather than `FROM models-${DEMO}`: buildah (podman 4) skips stages it
# cannot see referenced, and then fails on the variable stage name.
FROM base AS model-builder
ARG DEMO=dinov2
ARG PIP_CERT
# PyPI's Linux torch wheels bring ~3 GB of CUDA libraries that an export on CPU does not use; set
# e.g. https://download.pytorch.org/whl/cpu to take the CPU build from there.
ARG TORCH_INDEX_URL=
COPY --from=requirements /build/train.txt /build/
RUN --mount=type=cache,target=/root/.cache \
    case "$DEMO" in \
      tiny) ;; \
      dinov2) python3 -m venv /opt/train \
           && /opt/train/bin/pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
                --requirement /build/train.txt ;; \
      *) echo "DEMO must be tiny or dinov2, not '$DEMO'" >&2; exit 1 ;; \
    esac
COPY demo /src/demo
RUN if [ "$DEMO" = tiny ]; then cp -r /src/demo/model_repo /models; fi
# The project's own wheel (the app stage's) exports the committed runs in /src/demo. The cache mount
# keeps pip's wheels and the converted backbone between builds.
RUN --mount=type=cache,target=/root/.cache \
    --mount=type=bind,from=app,source=/wheels,target=/tmp/wheels \
    if [ "$DEMO" = dinov2 ]; then \
      /opt/train/bin/pip install --no-deps --no-index /tmp/wheels/*.whl \
      && /opt/train/bin/dynadapter demo build --demo-dir /src/demo --out /models --no-fixtures \
      && rm -f /models/.build.lock; \
    fi \
 && test -n "$(find /models -name manifest.json)"

FROM base AS runtime
ARG APP_UID=10001
# A numeric, non-root user: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid "$APP_UID" dynadapter \
 && useradd --system --uid "$APP_UID" --gid dynadapter --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin dynadapter
COPY --from=builder /opt/venv /opt/venv
# onnxruntime's CUDA provider finds libcudart, cuBLAS, cuDNN... through the loader cache rather than
# an LD_LIBRARY_PATH that would hard-code the Python version; the NVIDIA container toolkit reruns
# ldconfig after it mounts the driver, and that keeps these entries. A no-op without the CUDA wheels.
RUN find /opt/venv -type d -path '*/site-packages/nvidia/*/lib' > /etc/ld.so.conf.d/zz-pip-nvidia.conf \
 && ldconfig
# Before the code: a code change leaves the model layer (up to ~90 MB) cached.
COPY --from=model-builder /models /models
RUN --mount=type=bind,from=app,source=/wheels,target=/tmp/wheels \
    /opt/venv/bin/pip install --no-deps --no-index /tmp/wheels/*.whl

# Mount another repository over /models, or anywhere and point DYNADAPTER_MODEL_REPO at it.
ENV PATH=/opt/venv/bin:$PATH \
    DYNADAPTER_MODEL_REPO=/models \
    DYNADAPTER_HOST=0.0.0.0 \
    DYNADAPTER_PORT=8000 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER ${APP_UID}:${APP_UID}
# REST, and OIP v2 over gRPC (setting grpc_port, Triton's 8001)
EXPOSE 8000 8001
# The image has no curl: ask /readyz with the standard library; an HTTP 503 raises, so it fails.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('DYNADAPTER_PORT', '8000'), timeout=4)"]
LABEL org.opencontainers.image.title="dyn-adapter" \
      org.opencontainers.image.description="Early-exit ViT classification served with onnxruntime" \
      org.opencontainers.image.licenses="Apache-2.0"
# `python -m dynadapter.service` reads every DYNADAPTER_* variable; one uvicorn worker per container.
CMD ["python", "-m", "dynadapter.service"]
