#!/usr/bin/env bash
# Everything the gateway needs on a fresh Debian machine: Python 3.11 venv with the pinned
# dependencies, and RabbitMQ running on 127.0.0.1. Idempotent and quick when already done.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
say() { echo "[zdravlink] $*"; }
if [ -n "$SUDO" ] && ! command -v sudo >/dev/null; then say "run as root or install sudo"; exit 1; fi

# Python 3.11: spyne 2.14 imports on 3.11 only. Debian 12's python3 is 3.11.
PY=""
for cand in python3.11 python3; do
  if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    PY="$(command -v "$cand")"; break
  fi
done
if [ -z "$PY" ] || ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  say "installing Python 3.11 (Debian packages python3 python3-venv python3-dev gcc)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-venv python3-dev gcc >/dev/null
  PY="$(command -v python3.11 || command -v python3)"
  "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { say "Python 3.11 is required, found $("$PY" --version)"; exit 1; }
fi

# Signing: OpenSSL's GOST engine (GOST R 34.10/34.11-2012; neither xmlsec nor the cryptography wheel
# has GOST) and the openssl command that `zdravlink keys demo` drives. xmlsec1 is the independent
# XML-DSig implementation the interoperability tests check our signatures against.
need=()
for pkg in openssl libengine-gost-openssl xmlsec1; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]} (Debian packages)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

stamp="$(cat pyproject.toml requirements.lock scripts/setup-tools.lock | sha256sum | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi
if [ "$(cat .venv/.zl-installed 2>/dev/null)" != "$stamp" ]; then
  say "installing the locked dependencies into .venv (requirements.lock, hashes checked)"
  # uv and pip first, pinned with their hashes; uv installs the lock in seconds where pip took 20.
  .venv/bin/python -m pip install -q --require-hashes -r scripts/setup-tools.lock
  # --compile-bytecode as pip does: otherwise the first processes compile the libraries at once, each.
  uv=(.venv/bin/uv pip install -q --python .venv/bin/python --compile-bytecode)
  if "${uv[@]}" --require-hashes -r requirements.lock; then
    "${uv[@]}" --no-deps -e .
  else
    # uv reads no pip.conf: where only pip knows the way to the packages (a mirror set there), pip does it.
    say "uv could not install the lock (above); pip installs it instead"
    .venv/bin/python -m pip install -q --require-hashes -r requirements.lock
    .venv/bin/python -m pip install -q --no-deps -e .
  fi
  # lxml and xmlsec must bundle the same libxml2, or `import xmlsec` fails (pyproject.toml pins).
  .venv/bin/python -c 'import lxml, xmlsec, spyne, pika' 2>/dev/null || { say "import check failed (lxml/xmlsec pin?)"; exit 1; }
  echo "$stamp" > .venv/.zl-installed
fi
mkdir -p var
"$ROOT/scripts/rabbitmq.sh" start
