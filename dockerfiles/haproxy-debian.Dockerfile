# HAProxy from Debian's package, in front of the compose fleet (docker-compose.yml, profile
# "fleet"), for hosts that cannot pull an HAProxy image. It builds on the local Debian base
# (dockerfiles/debian-base.sh) and runs deploy/haproxy/haproxy.cfg with the replicas' slots of
# deploy/haproxy/compose-replicas.cfg appended, both mounted at /etc/haproxy/fisheye.
ARG BASE_IMAGE=fisheye-base:bookworm
FROM ${BASE_IMAGE}
# Bookworm's HAProxy 2.6, whatever its security revision.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends 'haproxy=2.6.*' \
    && rm -rf /var/lib/apt/lists/*
USER haproxy
EXPOSE 8080 8404
ENV FISHEYE_LB_BIND=*:8080 \
    FISHEYE_LB_STATS_BIND=*:8404
# The stats listener answers (bash's /dev/tcp: slim bases have no curl or Python).
HEALTHCHECK --interval=10s --timeout=3s \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8404"]
# -W: master-worker mode, so a SIGTERM from `docker stop` ends it cleanly.
CMD ["sh", "-c", "cat /etc/haproxy/fisheye/haproxy.cfg /etc/haproxy/fisheye/compose-replicas.cfg > /tmp/haproxy.cfg && exec haproxy -W -db -f /tmp/haproxy.cfg"]
