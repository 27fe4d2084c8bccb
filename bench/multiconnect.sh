#!/usr/bin/env bash
# MultiConnect and TLS cost, measured with the tern CLI against a local ternd:
#  1. through tern-faultproxy capping each connection at 20 MB/s with 20 ms
#     latency each way: 1 connection against 4, on 1 GiB of unique data;
#  2. on plain loopback: plaintext with 1 connection against TLS with 4.
# Prints numbers; never fails on speed.
#
# usage: bench/multiconnect.sh [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
cargo build --release -q
work=$(mktemp -d)
trap 'kill $server $proxy 2>/dev/null || true; rm -rf "$work"' EXIT
head -c $((size_mib << 20)) /dev/urandom > "$work/data"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port); plain=$(free_port); pport=$(free_port)
export TERN_PASSWORD=bench TERN_CONFIG_DIR=$work/cfg
target/release/ternd serve --data "$work/srv" --listen 127.0.0.1:$port --plain-listen 127.0.0.1:$plain >/dev/null 2>&1 &
server=$!
for _ in $(seq 100); do target/release/ternd fingerprint --data "$work/srv" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 0.5
export TERN_FINGERPRINT=$(target/release/ternd fingerprint --data "$work/srv")
target/release/tern-faultproxy --listen 127.0.0.1:$pport --target 127.0.0.1:$port --latency-ms 20 --conn-rate 20000000 >/dev/null &
proxy=$!
sleep 0.3
n=0
run() {
  local label=$1; shift
  n=$((n + 1))
  # A fresh storage group each time, so no run dedups against another.
  target/release/tern --server 127.0.0.1:$port container create "c$n" --group "g$n" >/dev/null
  local out
  out=$(target/release/tern --json "$@" backup --container "c$n" --name img "$work/data")
  echo "$out" | python3 -c "import json,sys; d=json.load(sys.stdin); print('%-34s %8.1f MB/s' % ('$label', d['mb_per_s']))"
}
run "proxy 20 MB/s+20 ms, 1 connection" --server 127.0.0.1:$pport --connections 1
run "proxy 20 MB/s+20 ms, 4 connections" --server 127.0.0.1:$pport --connections 4
run "loopback plaintext, 1 connection" --server 127.0.0.1:$plain --plain --connections 1
run "loopback TLS, 4 connections" --server 127.0.0.1:$port --connections 4
run "loopback TLS, 1 connection" --server 127.0.0.1:$port --connections 1
