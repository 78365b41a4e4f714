#!/usr/bin/env bash
# Incremental runs beside the full run they build on, measured in the same
# run, on the embedded default (local repository, local key).
#
#   bench/incremental.sh [SIZE_MB] [SEED]        (default: 1200 1, about 100k files)
#
# Steps, each timed (wall seconds, peak RSS), after an untimed `sync` and
# with the tree in the page cache:
#   1. full backup of the corpus (a copy of it: the corpus cache stays pristine)
#   2. incremental with nothing changed
#   3. bench/mutate-corpus.sh 5 %, then an incremental
#   4. restore of one small file from the latest snapshot, and a full restore
# The ratios are against the full run (steps 2–3) and the full restore
# (step 4). It also reports what the per-frame index costs in size: the
# full archive beside `tar -cf - | zstd -3` of the same tree (one long
# zstd frame instead of independent 4 MiB frames).
#
# Environment: BENCH_DIR (default /var/tmp/vaultline-bench) as in
# bench/backup-restore.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
size=${1:-1200}
seed=${2:-1}
work=${BENCH_DIR:-/var/tmp/vaultline-bench}
mkdir -p "$work"
for tool in tar zstd /usr/bin/time python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 2; }
done

# shellcheck source=bench/common.sh
source bench/common.sh

run=$work/incr-$$
rm -rf "$run"
mkdir -p "$run"
trap 'rm -rf "$run"' EXIT
echo "==> copying the corpus to $run/src"
cp -a "$src" "$run/src"
local_config "$run" "data=$run/src"
VL=("$vl" --config "$run/config.toml")
"${VL[@]}" init >/dev/null

warm() { find "$run/src" -type f -print0 | xargs -0 cat >/dev/null; }

# timed NAME CMD...: runs CMD, records wall seconds and peak RSS (KiB).
timed() {
    local name=$1
    shift
    sync
    /usr/bin/time -f "%e %M" -o "$run/$name.time" "$@" >"$run/$name.out"
    read -r secs rss <"$run/$name.time"
    printf '%s' "$secs" >"$run/$name.secs"
    echo "   $name: ${secs}s, peak RSS $((rss / 1024)) MiB"
}
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[0][sys.argv[2]])" "$run/$1.out" "$2"; }

echo "==> full backup"
warm
timed full "${VL[@]}" --json backup now
echo "==> incremental, nothing changed"
warm
timed idle "${VL[@]}" --json backup now
echo "==> mutate-corpus.sh 5 %"
bench/mutate-corpus.sh "$run/src" 5 7 >/dev/null
warm
echo "==> incremental after the 5 % change"
timed changed "${VL[@]}" --json backup now

small=$(find "$run/src" -type f -size -4k -name '*.txt' | sort | sed -n 1p)
echo "==> restore of one file ($small) and a full restore"
sync
echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
timed one "${VL[@]}" restore latest "$small" --target "$run/t-one"
timed whole "${VL[@]}" restore latest --target "$run/t-whole"

echo "==> size: one zstd stream of the same tree (tar | zstd -3 -T0)"
# The full archive was written before the mutation: compare it with the
# tree as it was, i.e. the original corpus.
tar -C "$(dirname "$src")" -cf - "$(basename "$src")" | zstd -3 -T0 -q -c >"$run/baseline-full.tar.zst"
archive=$(find "$run/repo" -path "*archives/$(field full snapshot)/*" -type f -printf '%s\n')
baseline=$(stat -c %s "$run/baseline-full.tar.zst")

ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.3f}')" "$1" "$2"; }
full=$(cat "$run/full.secs")
echo
echo "corpus: $files files, $bytes bytes (make-corpus.sh $size $seed)"
echo "full backup:              ${full}s, archived $(field full archived_files) files, stored $(field full bytes_stored) bytes"
echo "incremental, no change:   $(cat "$run/idle.secs")s = $(ratio "$(cat "$run/idle.secs")" "$full")x the full run; archived $(field idle archived_files) files, stored $(field idle bytes_stored) bytes (manifest only: archive=$(field idle archive))"
echo "incremental, 5 % changed: $(cat "$run/changed.secs")s = $(ratio "$(cat "$run/changed.secs")" "$full")x the full run; archived $(field changed archived_files) files ($(field changed archived_bytes) bytes), stored $(field changed bytes_stored) bytes, $(field changed deleted) deleted"
echo "restore of one file:      $(cat "$run/one.secs")s = $(ratio "$(cat "$run/one.secs")" "$(cat "$run/whole.secs")")x the full restore ($(cat "$run/whole.secs")s)"
echo "index cost in size:       full archive $archive bytes vs tar|zstd -3 $baseline bytes = $(ratio "$archive" "$baseline")x"
