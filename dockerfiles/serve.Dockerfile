# FishEye model server: the lean runtime (ONNX Runtime, no PyTorch) and the committed default
# model. Build from the repository root (`make image-serve` does this):
#   docker build -f dockerfiles/serve.Dockerfile -t fisheye-serve .
#   docker run --rm -p 8000:8000 --read-only --tmpfs /tmp -v fisheye-data:/data fisheye-serve
# Serve another bundle by mounting it over the default one:
#   docker run ... -v "$PWD/models/mine:/app/models/default:ro" fisheye-serve
# BASE_IMAGE: any Debian-based image with Python 3.11 and its venv module; the official slim
# image by default, the local Debian base (dockerfiles/debian-base.sh) where no registry is
# reachable.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# Marks the build stage's cached image, so old ones can be pruned (tests/helpers/docker.py).
LABEL org.fisheye.stage="serve-build"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/fisheye
# The dependencies first, in a layer of their own that a change to the code does not rebuild.
COPY pyproject.toml dockerfiles/requirements.py /src/
RUN python3 /src/requirements.py /src/pyproject.toml > /tmp/requirements.txt \
    && /opt/fisheye/bin/pip install -r /tmp/requirements.txt
COPY README.md /src/
COPY src /src/src
RUN /opt/fisheye/bin/pip install --no-deps /src

FROM ${BASE_IMAGE}
ARG VERSION=dev
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="fisheye-serve" \
      org.opencontainers.image.description="FishEye: fish and seafood species recognition, HTTP API and web page" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.licenses="MIT"

# A system user without a home; minimal Debian bases have no useradd. /data holds the
# prediction log: a named volume mounted there takes this ownership.
RUN echo 'fisheye:x:10001:10001:FishEye:/nonexistent:/usr/sbin/nologin' >> /etc/passwd \
    && echo 'fisheye:x:10001:' >> /etc/group \
    && mkdir /data && chown 10001:10001 /data

COPY --from=build /opt/fisheye /opt/fisheye
COPY models/default /app/models/default

# Nothing is written outside /data and /tmp, so the root filesystem can be read-only.
ENV PATH=/opt/fisheye/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    FISHEYE_MODEL=/app/models/default \
    FISHEYE_HOST=0.0.0.0 \
    FISHEYE_PORT=8000 \
    FISHEYE_PREDICTION_DB=/data/predictions.sqlite
WORKDIR /app
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['FISHEYE_PORT']}/healthz\", timeout=4)"]

# SIGTERM (docker stop, Kubernetes) drains requests and flushes the prediction log.
STOPSIGNAL SIGTERM
CMD ["fisheye", "serve"]
