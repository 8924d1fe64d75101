#!/bin/sh
# First start: create the cluster, its user and database from POSTGRES_USER, POSTGRES_PASSWORD
# and POSTGRES_DB (as the official image does); then run PostgreSQL in the foreground.
# A first start cut short is finished at the next one (the marker file comes last).
set -eu
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "POSTGRES_PASSWORD is not set: the store needs a password for network clients" >&2
    exit 1
fi
marker="$PGDATA/.fisheye-initialized"
if [ ! -e "$marker" ]; then
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        pwfile=$(mktemp)
        printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
        initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" \
            --auth-local=trust --auth-host=scram-sha-256 >/dev/null
        rm -f "$pwfile"
        echo "host all all 0.0.0.0/0 scram-sha-256" >>"$PGDATA/pg_hba.conf"
        echo "host all all ::/0 scram-sha-256" >>"$PGDATA/pg_hba.conf"
    fi
    exists=$(echo "SELECT 'found' FROM pg_database WHERE datname = '$POSTGRES_DB'" \
        | postgres --single -D "$PGDATA" -j template1 | grep -c found || true)
    if [ "$exists" = 0 ]; then
        echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\"" \
            | postgres --single -D "$PGDATA" -j template1 >/dev/null
    fi
    touch "$marker"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql
