#!/bin/sh
# The postgres stand-in's entrypoint: on an empty data directory, initdb with
# POSTGRES_PASSWORD for POSTGRES_USER (default postgres), create POSTGRES_DB, run
# /docker-entrypoint-initdb.d/*.sql in it on a server reachable only through its socket;
# then run the command (postgres) listening on every address, passwords required.
set -eu
user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$user}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?the postgres stand-in needs POSTGRES_PASSWORD}"
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --username="$user" --pwfile="$pwfile" --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 --no-instructions >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  pg_ctl --wait --silent --options="-c listen_addresses=''" start
  if [ "$db" != postgres ]; then
    createdb --username="$user" "$db"
  fi
  for script in /docker-entrypoint-initdb.d/*.sql; do
    [ -e "$script" ] || continue
    echo "postgres stand-in: running $script"
    psql --quiet --set ON_ERROR_STOP=1 --username="$user" --dbname="$db" --file="$script"
  done
  pg_ctl --wait --silent --mode=fast stop
fi
exec "$@"
