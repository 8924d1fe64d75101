# FishEye model server (CPU). Build from the repository root:
#   docker build -f dockerfiles/serve.Dockerfile -t fisheye-serve .
#   docker run --rm -p 8000:8000 fisheye-serve
# Serve another bundle by mounting it over the baked-in default:
#   docker run --rm -p 8000:8000 -v "$PWD/models/mine:/app/models/default:ro" fisheye-serve
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# CPU-only PyTorch first (the default index would pull the multi-GB CUDA build).
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1 torchvision==0.29.1

COPY pyproject.toml README.md* ./
COPY src ./src
RUN pip install . && rm -rf src

# The committed default model; mount a folder here to serve another bundle.
COPY models/default ./models/default

# /data holds the prediction log; a named volume mounted there inherits this ownership.
RUN useradd --create-home --uid 10001 fisheye && mkdir /data && chown fisheye /data
USER fisheye

ENV FISHEYE_MODEL=/app/models/default \
    FISHEYE_HOST=0.0.0.0 \
    FISHEYE_PORT=8000 \
    FISHEYE_THREADS=2
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["fisheye", "serve"]
