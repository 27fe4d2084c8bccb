#!/usr/bin/env bash
# Compares examples/backup.c (libtern) with the tern CLI on the same file, each
# as a first backup (separate storage groups, so neither dedups against the
# other), over TLS to a local ternd. Prints numbers; never fails on speed.
#
# usage: bench/sdk-vs-cli.sh [FILE]   (default: 1 GiB of /usr as a tar)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
make -s -C examples >/dev/null
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
file=${1:-}
if [ -z "$file" ]; then
  file=$work/data
  tar -C / --sort=name --mtime=@0 --owner=0 --group=0 -cf - usr 2>/dev/null | head -c $((1 << 30)) > "$file" || true
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export TERN_PASSWORD=bench TERN_SERVER=127.0.0.1:$port TERN_CONFIG_DIR=$work/cfg
target/release/ternd serve --data "$work/srv" --listen 127.0.0.1:$port >/dev/null 2>&1 &
server=$!
for _ in $(seq 100); do target/release/ternd fingerprint --data "$work/srv" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 0.5
export TERN_FINGERPRINT=$(target/release/ternd fingerprint --data "$work/srv")
target/release/tern container create via-cli --group g-cli >/dev/null
target/release/tern container create via-c --group g-c >/dev/null
bytes=$(stat -c %s "$file")
for run in cli c; do
  start=$(date +%s.%N)
  if [ $run = cli ]; then
    /usr/bin/time -f '%U %S %M' -o "$work/t" target/release/tern backup --container via-cli --name img "$file" >/dev/null
  else
    /usr/bin/time -f '%U %S %M' -o "$work/t" target/release/examples/backup "$TERN_SERVER" via-c img < "$file" 2>/dev/null
  fi
  end=$(date +%s.%N)
  read -r usr sys rss < "$work/t"
  awk -v r=$run -v b=$bytes -v s=$start -v e=$end -v u=$usr -v y=$sys -v m=$rss \
    'BEGIN { printf "%-4s %8.1f MB/s  %6.2f s  cpu %6.2f s  rss %6.1f MiB\n", r, b/(e-s)/1e6, e-s, u+y, m/1024 }'
done
