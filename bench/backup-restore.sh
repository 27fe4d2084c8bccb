#!/usr/bin/env bash
# Times a first backup, an edited second backup and a restore of a data set
# through a real ternd over TLS on loopback, with release builds, and prints
# MB/s, CPU seconds and peak RSS of client and server. Prints numbers; never fails on speed.
#
# usage: bench/backup-restore.sh [SIZE_MIB] [EDITS]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
edits=${2:-300}
cargo build --release -q
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT

# v1: a deterministic tar of /usr, cut to size (real, compressible, dedupable data).
tar -C / --sort=name --mtime=@0 --owner=0 --group=0 -cf - usr 2>/dev/null | head -c "$((size_mib << 20))" > "$work/v1" || true
python3 bench/edit.py "$work/v1" "$work/v2" "$edits"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export TERN_PASSWORD=bench TERN_SERVER=127.0.0.1:$port TERN_CONFIG_DIR=$work/cfg
target/release/ternd serve --data "$work/data" --listen 127.0.0.1:$port >/dev/null 2>"$work/ternd.log" &
server=$!
for _ in $(seq 100); do target/release/ternd fingerprint --data "$work/data" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 0.5
export TERN_FINGERPRINT=$(target/release/ternd fingerprint --data "$work/data")
target/release/tern container create bench >/dev/null

cpu() { awk '{print $14+$15}' /proc/$server/stat; }
hz=$(getconf CLK_TCK)
printf '%-10s %10s %10s %12s %12s %12s %12s %12s\n' step MB/s seconds client_cpu_s server_cpu_s client_rss_MiB server_rss_MiB store_MiB
run() {
  local step=$1; shift
  local before=$(cpu)
  /usr/bin/time -f '%e %U %S %M' -o "$work/time" "$@" > "$work/out"
  local after=$(cpu)
  read -r secs usr sys rss < "$work/time"
  local bytes=$(stat -c %s "$work/v1")
  [ "$step" != backup1 ] && bytes=$(stat -c %s "$work/v2")
  local srss=$(awk '/VmHWM/ {print $2}' /proc/$server/status)
  local store=$(du -sk "$work/data/groups" | cut -f1)
  awk -v s="$step" -v b="$bytes" -v t="$secs" -v u="$usr" -v y="$sys" -v r="$rss" -v sc="$((after - before))" -v hz="$hz" -v sr="$srss" -v st="$store" \
    'BEGIN { printf "%-10s %10.1f %10.2f %12.2f %12.2f %12.1f %12.1f %12.1f\n", s, b/t/1e6, t, u+y, sc/hz, r/1024, sr/1024, st/1024 }'
}
run backup1 target/release/tern --json backup --container bench --name v1 "$work/v1"
cp "$work/out" "$work/b1.json"
run backup2 target/release/tern --json backup --container bench --name v2 "$work/v2"
cp "$work/out" "$work/b2.json"
run restore2 target/release/tern restore --container bench --name v2 "$work/restored"
cmp "$work/v2" "$work/restored" && echo "restore: byte-identical"
echo "backup1: $(cat "$work/b1.json")"
echo "backup2: $(cat "$work/b2.json")"
echo "edits: $edits; average chunk 64 KiB; bound for backup2 = 2 chunks per edit = $((edits * 2 * 65536)) bytes"
