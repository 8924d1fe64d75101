# FishEye training image: PyTorch, Lightning and Hydra, for CPU or GPU training jobs.
# Build from the repository root (`make image-train` does this):
#   docker build -f dockerfiles/train.Dockerfile -t fisheye-train .
#   docker run --rm -v "$PWD/data:/work/data" -v "$PWD/runs:/work/runs" fisheye-train \
#       fisheye train data.root=data/fish-256 trainer.max_epochs=5
#
# TORCH_INDEX_URL picks the PyTorch build:
#   https://download.pytorch.org/whl/cpu (default)  CPU only, the smaller image
#   https://pypi.org/simple                         CUDA: the wheels carry the CUDA runtime and
#       cuDNN, so the same slim base serves GPU jobs; the host needs the NVIDIA driver and the
#       NVIDIA container toolkit (`docker run --gpus all ... fisheye train trainer=gpu`).
# BASE_IMAGE: as in serve.Dockerfile (official Python slim image by default).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# Marks the build stage's cached image, so old ones can be pruned (tests/helpers/docker.py).
LABEL org.fisheye.stage="train-build"
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/fisheye
COPY pyproject.toml dockerfiles/requirements.py /src/
# PyTorch from its index first; the other requirements then find it installed.
RUN python3 /src/requirements.py /src/pyproject.toml train --only torch,torchvision > /tmp/torch.txt \
    && /opt/fisheye/bin/pip install --index-url "${TORCH_INDEX_URL}" -r /tmp/torch.txt \
    && python3 /src/requirements.py /src/pyproject.toml train > /tmp/requirements.txt \
    && /opt/fisheye/bin/pip install -r /tmp/requirements.txt
COPY README.md /src/
COPY src /src/src
RUN /opt/fisheye/bin/pip install --no-deps /src

FROM ${BASE_IMAGE}
ARG VERSION=dev
ARG GIT_COMMIT=unknown
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
LABEL org.opencontainers.image.title="fisheye-train" \
      org.opencontainers.image.description="FishEye training: PyTorch Lightning + Hydra, fish species recognition" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.licenses="MIT" \
      io.fisheye.torch-index="${TORCH_INDEX_URL}"

RUN echo 'fisheye:x:10001:10001:FishEye:/work:/usr/sbin/nologin' >> /etc/passwd \
    && echo 'fisheye:x:10001:' >> /etc/group \
    && mkdir /work && chown 10001:10001 /work

COPY --from=build /opt/fisheye /opt/fisheye

# Runs write under /work (runs/, data/): mount volumes there to keep them.
ENV PATH=/opt/fisheye/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    HOME=/work
WORKDIR /work
USER 10001:10001

# A training job has no port to probe: the check says the environment is intact.
HEALTHCHECK --interval=5m --timeout=10s --retries=3 \
    CMD ["python", "-c", "import fisheye"]

CMD ["fisheye", "train", "--help"]
