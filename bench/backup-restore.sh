#!/usr/bin/env bash
# Backup and restore throughput of vaultline (local repository) beside the
# plain-tool baselines, measured in the same run, plus vaultline's peak RSS.
#
#   bench/backup-restore.sh [SIZE_MB] [SEED] [ROUNDS]     (default: 1024 1 3)
#
# Baselines (the issue's targets are ratios against these):
#   backup:  tar -cf - DIR | zstd -3 -T0 > FILE
#   restore: zstd -d -c FILE | tar -xf -
# vaultline's backups are full ones (`--full`): runs after the first would
# otherwise be incremental (bench/incremental.sh measures those).
# Each round runs both sides of backup, then both sides of restore, each
# restore into a fresh directory; rounds alternate which side goes first, and
# every timed phase starts after an (untimed) `sync`, so neither side pays for
# the other's writeback. The source is re-read into the page cache right
# before each backup (both sides read from cache). The median of the rounds is
# reported. vaultline's backup fsyncs what it commits and its restore ends with
# syncfs; the baselines do neither.
#
# Environment: BENCH_DIR (default /var/tmp/vaultline-bench) holds the corpus
# (made once by bench/make-corpus.sh, reused) and the run directories.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
size=${1:-1024}
seed=${2:-1}
rounds=${3:-3}
work=${BENCH_DIR:-/var/tmp/vaultline-bench}
mkdir -p "$work"

for tool in tar zstd /usr/bin/time python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 2; }
done

# shellcheck source=bench/common.sh
source bench/common.sh

run=$work/run-$$
rm -rf "$run"
mkdir -p "$run"
trap 'rm -rf "$run"' EXIT

warm() { tar -cf - -C "$src" . | cat > /dev/null; }
now() { date +%s.%N; }
# Runs "$@" under /usr/bin/time; prints "SECONDS MAXRSS_KIB".
timed() {
    /usr/bin/time -f '%e %M' -o "$run/time.out" "$@" > /dev/null
    cat "$run/time.out"
}

local_config "$run" "corpus=$src"
"$vl" --config "$run/config.toml" -q init > /dev/null

declare -a b_base b_vl r_base r_vl b_rss r_rss
base_backup() {
    warm; sync
    local t0 t1
    t0=$(now); tar -cf - -C "$src" . | zstd -3 -T0 -q > "$run/base-$1.tar.zst"; t1=$(now)
    b_base+=("$(awk "BEGIN {print $t1 - $t0}")")
}
vl_backup() {
    warm; sync
    local secs rss
    read -r secs rss < <(timed "$vl" --config "$run/config.toml" -q backup now --full)
    b_vl+=("$secs"); b_rss+=("$rss")
}
base_restore() {
    mkdir "$run/out-base-$1"; sync
    local t0 t1
    t0=$(now); zstd -d -c -q "$run/base-$1.tar.zst" | tar -xf - -C "$run/out-base-$1"; t1=$(now)
    r_base+=("$(awk "BEGIN {print $t1 - $t0}")")
}
vl_restore() {
    mkdir "$run/out-vl-$1"; sync
    local secs rss
    read -r secs rss < <(timed "$vl" --config "$run/config.toml" -q restore latest --target "$run/out-vl-$1")
    r_vl+=("$secs"); r_rss+=("$rss")
}
for i in $(seq 1 "$rounds"); do
    # Alternate which side goes first, so neither always inherits the other's
    # background writeback; `sync` before each timed phase (untimed) too.
    if [ $((i % 2)) -eq 1 ]; then
        base_backup "$i"; vl_backup; base_restore "$i"; vl_restore "$i"
    else
        vl_backup; base_backup "$i"; vl_restore "$i"; base_restore "$i"
    fi
    echo "round $i: backup base ${b_base[-1]}s vaultline ${b_vl[-1]}s (rss ${b_rss[-1]} KiB); restore base ${r_base[-1]}s vaultline ${r_vl[-1]}s (rss ${r_rss[-1]} KiB)"
done

stored=$(du -sb "$run/repo" | cut -f1)
base_size=$(stat -c %s "$run/base-1.tar.zst")
python3 - "$bytes" "$stored" "$base_size" "$rounds" \
    "${b_base[*]}" "${b_vl[*]}" "${r_base[*]}" "${r_vl[*]}" "${b_rss[*]}" "${r_rss[*]}" <<'PY'
import statistics as st, sys
nbytes, stored, base_size, rounds = map(int, sys.argv[1:5])
series = [list(map(float, s.split())) for s in sys.argv[5:11]]
b_base, b_vl, r_base, r_vl, b_rss, r_rss = series
mb = nbytes / 1e6
def rate(xs): return mb / st.median(xs)
print()
print(f"input: {mb:.1f} MB; vaultline repository {stored/1e6:.1f} MB for {rounds} snapshots "
      f"({stored/rounds/1e6:.1f} MB each), baseline tar.zst {base_size/1e6:.1f} MB")
print(f"{'':24}{'baseline MB/s':>15}{'vaultline MB/s':>16}{'ratio':>8}")
print(f"{'backup':24}{rate(b_base):>15.1f}{rate(b_vl):>16.1f}{rate(b_vl)/rate(b_base):>8.2f}")
print(f"{'restore':24}{rate(r_base):>15.1f}{rate(r_vl):>16.1f}{rate(r_vl)/rate(r_base):>8.2f}")
print(f"peak RSS (max of rounds): backup {max(b_rss)/1024:.1f} MiB, restore {max(r_rss)/1024:.1f} MiB")
PY
