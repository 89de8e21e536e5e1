#!/usr/bin/env bash
# PostgreSQL on 127.0.0.1 for the journal tests: install (Debian package), start, create role and database.
#   scripts/postgres.sh start    → prints the SQLAlchemy URL
set -euo pipefail
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
say() { echo "[zdravlink] $*"; }
URL="postgresql+psycopg://zdravlink:zdravlink@127.0.0.1:5432/zdravlink"

[ "${1:-}" = "start" ] || { echo "usage: $0 start" >&2; exit 2; }
if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
  say "installing postgresql (Debian package)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
ver=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -q "^$ver main$"; then
  say "creating PostgreSQL $ver cluster"
  $SUDO pg_createcluster "$ver" main >/dev/null
fi
conf="/etc/postgresql/$ver/main/postgresql.conf"
grep -q "^listen_addresses = '127.0.0.1'" "$conf" || echo "listen_addresses = '127.0.0.1'" | $SUDO tee -a "$conf" >/dev/null
if ! pg_lsclusters -h | awk -v v="$ver" '$1==v && $2=="main" {print $4}' | grep -q online; then
  say "starting PostgreSQL $ver"
  $SUDO pg_ctlcluster "$ver" main start
fi
for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 && break; sleep 0.5; done
pg_isready -q -h 127.0.0.1 || { say "PostgreSQL did not start"; exit 1; }
psql_pg() { $SUDO runuser -u postgres -- psql -qtA -v ON_ERROR_STOP=1 "$@"; }
[ "$(psql_pg -c "select 1 from pg_roles where rolname='zdravlink'")" = "1" ] ||
  psql_pg -c "create role zdravlink login createdb password 'zdravlink'"
[ "$(psql_pg -c "select 1 from pg_database where datname='zdravlink'")" = "1" ] ||
  psql_pg -c "create database zdravlink owner zdravlink"
say "PostgreSQL is up: $URL"
