# PostgreSQL from Debian's package, the compose fleet's prediction store (docker-compose.yml,
# profile "fleet"), for hosts that cannot pull the official postgres image. It takes the
# official image's settings: POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, and its data in
# /var/lib/postgresql/data.
ARG BASE_IMAGE=fisheye-base:bookworm
FROM ${BASE_IMAGE}
# Bookworm's PostgreSQL 15, whatever its security revision.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends 'postgresql-15=15.*' \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY dockerfiles/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
USER postgres
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s \
    CMD ["pg_isready", "-h", "127.0.0.1", "-q"]
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
