#!/usr/bin/env bash
# What a run costs when big files change a little, and when nothing
# changes, measured in one run on the embedded default (local repository,
# local key), beside restic and borg when they are installed.
#
#   bench/chunks.sh [SIZE_MB] [SEED] [SMALL_FILES]   (default: 1024 1 1000000)
#
# 1. The corpus (make-corpus.sh SIZE SEED), copied, then mutate-corpus.sh
#    5 SEED; a full backup by each tool.
# 2. The workload: 1 MiB of log lines appended to each of the 10 largest
#    .log files, 64 KiB overwritten in the middle of the 3 largest files;
#    a second backup by each tool. Reported: bytes each repository grew by.
# 3. A run with nothing changed, timed beside `find DIR -printf '%s\n'` (a
#    scandir + lstat of every entry in C) and bench/walk.py (the same in
#    Python, the issue's baseline) in alternation (3 rounds, medians), and
#    the bytes it stored; the same on a tree of SMALL_FILES small files.
#    Peak RSS of both no-change runs (flat in the tree's size?).
# 4. With VAULTLINE_BASELINE=/path/to/an/older/vaultline: the full backup
#    and a 5 % change run of both binaries, alternated (3 pairs, medians).
# 5. Every vaultline snapshot restored and compared with the tree it was
#    taken of (content, by cmp -r through diff -r).
#
# Environment: BENCH_DIR (default /var/tmp/vaultline-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
size=${1:-1024}
seed=${2:-1}
small=${3:-1000000}
work=${BENCH_DIR:-/var/tmp/vaultline-bench}
mkdir -p "$work"
for tool in /usr/bin/time python3 diff; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 2; }
done

# shellcheck source=bench/common.sh
source bench/common.sh

run=$work/chunks-$$
rm -rf "$run"
mkdir -p "$run"
trap 'rm -rf "$run"' EXIT

config() { local_config "$1" "data=$2"; } # DIR SRC: one job, "data", backing up SRC
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.3f}')" "$1" "$2"; }
secs() { # CMD...: wall seconds (stdout to /dev/null)
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null
    t1=$(date +%s.%N)
    python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.3f}')" "$t0" "$t1"
}
rss() { # CMD...: peak RSS in KiB
    /usr/bin/time -f "%M" -o "$run/rss" "$@" >/dev/null
    cat "$run/rss"
}
du_b() { du -sb "$1" | cut -f1; }

echo "==> copying the corpus to $run/src, mutate-corpus.sh 5 $seed"
cp -a "$src" "$run/src"
bench/mutate-corpus.sh "$run/src" 5 "$seed" >/dev/null
mkdir -p "$run/vl"
config "$run/vl" "$run/src"
VL=("$vl" --config "$run/vl/config.toml")
"${VL[@]}" init >/dev/null

have_restic=false; have_borg=false
command -v restic >/dev/null && have_restic=true
command -v borg >/dev/null && have_borg=true
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$run/restic RESTIC_CACHE_DIR=$run/restic-cache
export BORG_PASSPHRASE=bench BORG_REPO=$run/borg BORG_BASE_DIR=$run/borg-base
$have_restic && restic init -q >/dev/null
$have_borg && borg init -e repokey >/dev/null 2>&1

snapshot_copies=()
backup_all() { # LABEL
    "${VL[@]}" --json backup now >"$run/vl-$1.json"
    local id
    id=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[0]['snapshot'])" "$run/vl-$1.json")
    cp -a "$run/src" "$run/at-$1"
    snapshot_copies+=("$id:$run/at-$1")
    $have_restic && restic backup -q "$run/src" >/dev/null
    $have_borg && borg create "::$1" "$run/src" >/dev/null 2>&1
    return 0
}

echo "==> full backups"
backup_all full
vl0=$(du_b "$run/vl/repo"); r0=0; b0=0
$have_restic && r0=$(du_b "$run/restic")
$have_borg && b0=$(du_b "$run/borg")

echo "==> workload: 1 MiB appended to the 10 largest .log files, 64 KiB rewritten in the 3 largest files"
python3 - "$run/src" <<'PY'
import os, random, sys
root = sys.argv[1]
files = []
for d, _, names in os.walk(root):
    for n in names:
        p = os.path.join(d, n)
        if os.path.isfile(p) and not os.path.islink(p):
            files.append((os.path.getsize(p), p))
files.sort()
logs = [f for f in files if f[1].endswith(".log")][-10:]
rng = random.Random(1)
words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
for _, p in logs:
    lines, n = [], 0
    while n < 1 << 20:
        line = f"2026-12-01T00:00:{n % 60:02d}Z INFO [bench] {' '.join(rng.choice(words) for _ in range(8))} req={rng.getrandbits(32):08x}\n"
        lines.append(line)
        n += len(line)
    with open(p, "a") as f:
        f.write("".join(lines)[: 1 << 20])
for size, p in files[-3:]:
    with open(p, "r+b") as f:
        f.seek(size // 2)
        f.write(rng.randbytes(64 << 10))
PY
backup_all workload
vl1=$(du_b "$run/vl/repo"); r1=0; b1=0
$have_restic && r1=$(du_b "$run/restic")
$have_borg && b1=$(du_b "$run/borg")

echo "==> no-change runs beside a scandir + lstat walk (3 alternated pairs)"
walk_times=(); py_times=(); idle_times=()
for _ in 1 2 3; do
    walk_times+=("$(secs find "$run/src" -printf '%s\n')")
    py_times+=("$(secs python3 bench/walk.py "$run/src")")
    idle_times+=("$(secs "${VL[@]}" --json backup now)")
done
"${VL[@]}" --json backup now >"$run/vl-idle.json"
idle_rss=$(rss "${VL[@]}" --json backup now)
idle_stored=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[0]['bytes_stored'])" "$run/vl-idle.json")
entries=$(find "$run/src" | wc -l)

echo "==> a tree of $small small files"
mkdir -p "$run/many/src"
python3 - "$run/many/src" "$small" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
per = 1000
for i in range(n):
    d = os.path.join(root, f"d{i // per:05d}")
    if i % per == 0:
        os.mkdir(d)
    with open(os.path.join(d, f"f{i % per:04d}"), "w") as f:
        f.write(f"{i}\n")
PY
config "$run/many" "$run/many/src"
VM=("$vl" --config "$run/many/config.toml")
"${VM[@]}" init >/dev/null
"${VM[@]}" --json backup now >"$run/many-full.json"
sleep 1
many_walk=(); many_py=(); many_idle=()
for _ in 1 2 3; do
    many_walk+=("$(secs find "$run/many/src" -printf '%s\n')")
    many_py+=("$(secs python3 bench/walk.py "$run/many/src")")
    many_idle+=("$(secs "${VM[@]}" --json backup now)")
done
"${VM[@]}" --json backup now >"$run/many-idle.json"
many_rss=$(rss "${VM[@]}" --json backup now)
many_stored=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[0]['bytes_stored'])" "$run/many-idle.json")

baseline_lines=()
if [ -n "${VAULTLINE_BASELINE:-}" ]; then
    echo "==> full backup and 5 % change run: this build vs $VAULTLINE_BASELINE (3 alternated pairs)"
    cp -a "$src" "$run/cmp-src"
    cmp_new=(); cmp_old=(); chg_new=(); chg_old=()
    for i in 1 2 3; do
        for who in new old; do
            d=$run/cmp-$who-$i
            mkdir -p "$d"
            config "$d" "$run/cmp-src"
            bin=$vl; [ "$who" = old ] && bin=$VAULTLINE_BASELINE
            "$bin" --config "$d/config.toml" init >/dev/null
            t=$(secs "$bin" --config "$d/config.toml" backup now)
            if [ "$who" = new ]; then cmp_new+=("$t"); else cmp_old+=("$t"); fi
        done
        bench/mutate-corpus.sh "$run/cmp-src" 5 "$((seed + i))" >/dev/null
        sleep 1
        for who in new old; do
            d=$run/cmp-$who-$i
            bin=$vl; [ "$who" = old ] && bin=$VAULTLINE_BASELINE
            t=$(secs "$bin" --config "$d/config.toml" backup now)
            if [ "$who" = new ]; then chg_new+=("$t"); else chg_old+=("$t"); fi
            rm -rf "$d"
        done
    done
    fn=$(median "${cmp_new[@]}"); fo=$(median "${cmp_old[@]}")
    cn=$(median "${chg_new[@]}"); co=$(median "${chg_old[@]}")
    baseline_lines+=("full backup:                 this ${fn}s, baseline ${fo}s = $(ratio "$fn" "$fo")x")
    baseline_lines+=("5 % change run:              this ${cn}s, baseline ${co}s = $(ratio "$cn" "$co")x")
fi

echo "==> restoring every vaultline snapshot of the workload chain"
for pair in "${snapshot_copies[@]}"; do
    id=${pair%%:*}; tree=${pair#*:}
    rm -rf "$run/restore"
    "${VL[@]}" restore "$id" --target "$run/restore" >/dev/null
    diff -r --no-dereference "$tree" "$run/restore$run/src" >/dev/null
    echo "   $id: identical"
done

wm=$(median "${walk_times[@]}"); im=$(median "${idle_times[@]}"); pm=$(median "${py_times[@]}")
mwm=$(median "${many_walk[@]}"); mim=$(median "${many_idle[@]}"); mpm=$(median "${many_py[@]}")
echo
echo "corpus: $files files, $bytes bytes (make-corpus.sh $size $seed, then mutate-corpus.sh 5 $seed)"
echo "bytes added by the workload run:"
echo "  vaultline: $((vl1 - vl0))"
$have_restic && echo "  restic:    $((r1 - r0)) (vaultline/restic = $(ratio $((vl1 - vl0)) $((r1 - r0))))"
$have_borg && echo "  borg:      $((b1 - b0)) (vaultline/borg = $(ratio $((vl1 - vl0)) $((b1 - b0))))"
echo "no-change run, $entries entries:     ${im}s vs find ${wm}s = $(ratio "$im" "$wm")x, vs python scandir+lstat ${pm}s = $(ratio "$im" "$pm")x; stored $idle_stored bytes; peak RSS $((idle_rss / 1024)) MiB"
echo "no-change run, $small small files: ${mim}s vs find ${mwm}s = $(ratio "$mim" "$mwm")x, vs python scandir+lstat ${mpm}s = $(ratio "$mim" "$mpm")x; stored $many_stored bytes; peak RSS $((many_rss / 1024)) MiB"
for l in "${baseline_lines[@]}"; do echo "$l"; done
echo "every snapshot restored identical: ${#snapshot_copies[@]}"
