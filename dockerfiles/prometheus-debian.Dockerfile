# Prometheus from Debian's package, for hosts that cannot pull prom/prometheus; it builds on
# the local Debian base (dockerfiles/debian-base.sh) and takes the official image's arguments:
#   docker build -f dockerfiles/prometheus-debian.Dockerfile -t fisheye-prometheus:debian dockerfiles
#   PROMETHEUS_IMAGE=fisheye-prometheus:debian docker compose up
ARG BASE_IMAGE=fisheye-base:bookworm
FROM ${BASE_IMAGE}
# Bookworm's Prometheus 2.42, whatever its security revision.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends 'prometheus=2.42.*' \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
VOLUME ["/prometheus"]
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/-/healthy', timeout=4)"]
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
