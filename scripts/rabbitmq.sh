#!/usr/bin/env bash
# RabbitMQ on 127.0.0.1 only: install (Debian package), configure, start, stop, status.
#   scripts/rabbitmq.sh start|stop|status
# There is no systemd on our machines; the server runs detached and answers AMQP ~6-7 s after start.
set -euo pipefail
export RABBITMQ_NODENAME=rabbit@localhost ERL_EPMD_ADDRESS=127.0.0.1
export ERL_CRASH_DUMP=/var/log/rabbitmq/erl_crash.dump  # not the working directory (the repository)
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -E"
say() { echo "[zdravlink] $*"; }

amqp_answers() {
  python3 - <<'PY'
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", 5672), timeout=2)
    s.sendall(b"AMQP\x00\x00\x09\x01")
    sys.exit(0 if s.recv(8) else 1)
except OSError:
    sys.exit(1)
PY
}

install() {
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    say "installing rabbitmq-server (Debian package)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rabbitmq-server >/dev/null
  fi
  local conf="listeners.tcp.1 = 127.0.0.1:5672
management.tcp.ip = 127.0.0.1"
  local envconf='NODE_IP_ADDRESS=127.0.0.1
NODENAME=rabbit@localhost
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"'
  [ "$(cat /etc/rabbitmq/rabbitmq.conf 2>/dev/null)" = "$conf" ] || echo "$conf" | $SUDO tee /etc/rabbitmq/rabbitmq.conf >/dev/null
  [ "$(cat /etc/rabbitmq/rabbitmq-env.conf 2>/dev/null)" = "$envconf" ] || echo "$envconf" | $SUDO tee /etc/rabbitmq/rabbitmq-env.conf >/dev/null
}

start() {
  install
  if amqp_answers; then say "RabbitMQ already answers on 127.0.0.1:5672"; return; fi
  say "starting RabbitMQ on 127.0.0.1:5672"
  $SUDO env RABBITMQ_NODENAME=$RABBITMQ_NODENAME ERL_EPMD_ADDRESS=$ERL_EPMD_ADDRESS rabbitmq-server -detached
  for _ in $(seq 1 120); do
    if amqp_answers; then
      # the app may accept TCP before it is fully booted
      $SUDO env RABBITMQ_NODENAME=$RABBITMQ_NODENAME rabbitmqctl -q await_startup >/dev/null 2>&1 || true
      say "RabbitMQ is up"; return
    fi
    sleep 0.5
  done
  say "RabbitMQ did not start within 60 s; see /var/log/rabbitmq/"; exit 1
}

stop() {
  $SUDO env RABBITMQ_NODENAME=$RABBITMQ_NODENAME rabbitmqctl -q stop >/dev/null 2>&1 || true
  pkill -x epmd 2>/dev/null || true
  say "RabbitMQ stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) amqp_answers && say "RabbitMQ answers" || { say "RabbitMQ does not answer"; exit 1; } ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
