#!/usr/bin/env bash
# vaultline beside the plain tools and beside restic and borg, in one table:
# wall time, CPU time, peak RSS and the ratio to the plain-tool baseline,
# each measured in pairs on the same corpus in the same run.
#
#   bench/compare.sh [SIZE_MB] [SEED] [ROUNDS]     (default: 1024 1 3)
#
# Operations (baseline in brackets; the issue's targets are ratios to it):
#   backup         full backup           [tar -cf - DIR | zstd -3 -T0 > FILE]
#   backup-same    backup, nothing changed (vaultline incremental, restic and
#                  borg deduplicating)   [the same full tar | zstd]
#   verify         read, authenticate, decompress, write nothing
#                                        [zstd -d -c FILE > /dev/null]
#   restore-tmpfs  full restore into a tmpfs (the tools' own speed)
#                                        [zstd -d -c FILE | tar -xf - -C DIR]
#   restore-disk   full restore into a directory on the disk of BENCH_DIR
#                                        [the same]
#   restore-chain  restore of the end of an incremental chain (full, then two
#                  incrementals after bench/mutate-corpus.sh 5 % each) into
#                  the tmpfs             [tar | zstd of the final tree, then
#                                         zstd -d | tar -x]
# Every round runs each tool of an operation once, one after the other, the
# order rotated from round to round (so no tool always inherits another's
# writeback or cache state); each run starts after an untimed `sync`, and
# each backup after re-reading the source into the page cache. The ratio of a
# tool is taken per round (its time / the baseline's time in the same round)
# and the table shows the median of those ratios with their range: absolute
# times on a shared machine drift, ratios of neighbours much less.
#
# Environment:
#   BENCH_DIR     corpus (made once by bench/make-corpus.sh, reused), repositories,
#                 disk restores (default /var/tmp/vaultline-bench)
#   BENCH_TMPFS   a tmpfs directory for the tmpfs restores (default /dev/shm)
#   BENCH_OTHERS  other tools to run when installed (default "restic borg";
#                 empty: only vaultline and the baselines)
#   BENCH_OPS     operations to run (default: all of the above)
#   BENCH_VAULTLINE  the vaultline binary to measure (default: this tree's
#                 release build, made first)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
size=${1:-1024}
seed=${2:-1}
rounds=${3:-3}
work=${BENCH_DIR:-/var/tmp/vaultline-bench}
fast=${BENCH_TMPFS:-/dev/shm}
ops=${BENCH_OPS:-backup backup-same verify restore-tmpfs restore-disk restore-chain}
mkdir -p "$work"

for tool in tar zstd /usr/bin/time python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 2; }
done
others=()
for tool in ${BENCH_OTHERS-restic borg}; do
    if command -v "$tool" >/dev/null; then others+=("$tool"); else echo "bench: $tool not installed, skipped"; fi
done

# shellcheck source=bench/common.sh
source bench/common.sh
# Another build to compare (an older commit's, say): BENCH_VAULTLINE=PATH.
vl=${BENCH_VAULTLINE:-$vl}

run=$work/compare-$$
shm=$fast/vaultline-compare-$$
rm -rf "$run" "$shm"
mkdir -p "$run" "$shm"
trap 'rm -rf "$run" "$shm"' EXIT
results=$run/results.tsv
: > "$results"

warm() { tar -cf - -C "$1" . | cat > /dev/null; }
has() { [[ " $ops " == *" $1 "* ]]; }

# measure OP TOOL ROUND CMD...: one timed run, appended to the results.
measure() {
    local op=$1 tool=$2 round=$3
    shift 3
    sync
    if ! /usr/bin/time -f '%e %U %S %M' -o "$run/time.out" "$@" > /dev/null 2> "$run/err.out"; then
        cat "$run/err.out" >&2
        echo "bench: $op with $tool failed: $*" >&2
        exit 1
    fi
    printf '%s\t%s\t%s\t%s\n' "$op" "$tool" "$round" "$(tail -n 1 "$run/time.out" | tr ' ' '\t')" >> "$results"
    printf '  %-14s %-9s round %s: %s s\n' "$op" "$tool" "$round" "$(tail -n 1 "$run/time.out" | cut -d' ' -f1)"
}

# rotated ROUND TOOL...: the tools, rotated by the round number.
rotated() {
    local r=$1
    shift
    local n=$#
    local tools=("$@")
    for i in $(seq 0 $((n - 1))); do echo "${tools[$(((i + r) % n))]}"; done
}

local_config "$run" "corpus=$src" "chain=$run/chain-src"
vl() { "$vl" --config "$run/config.toml" -q "$@"; }
vl init > /dev/null

export RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export BORG_BASE_DIR=$run/borg-home RESTIC_CACHE_DIR=$run/restic-cache
fresh_restic() { rm -rf "$run/restic"; restic init -q -r "$run/restic" > /dev/null; }
fresh_borg() { rm -rf "$run/borg"; borg init -e repokey "$run/borg" > /dev/null 2>&1; }

# backup TOOL ROUND OP: a backup of the corpus.
backup() {
    local tool=$1 r=$2 op=$3
    warm "$src"
    case $tool in
        base) measure "$op" base "$r" sh -c "tar -cf - -C '$src' . | zstd -3 -T0 -q > '$run/base.tar.zst'" ;;
        vaultline)
            if [ "$op" = backup ]; then measure "$op" vaultline "$r" "$vl" --config "$run/config.toml" -q backup corpus --full
            else measure "$op" vaultline "$r" "$vl" --config "$run/config.toml" -q backup corpus; fi ;;
        restic)
            [ "$op" = backup ] && fresh_restic
            measure "$op" restic "$r" restic -q -r "$run/restic" backup --host bench "$src" ;;
        borg)
            [ "$op" = backup ] && fresh_borg
            measure "$op" borg "$r" borg create --compression zstd,3 "$run/borg::$op-$r" "$src" ;;
    esac
}

# restore TOOL ROUND OP DIR: a full restore into DIR (made fresh).
restore() {
    local tool=$1 r=$2 op=$3 dir=$4
    mkdir -p "$dir"
    case $tool in
        base)
            local file=$run/base.tar.zst
            [ "$op" = restore-chain ] && file=$run/chain.tar.zst
            measure "$op" base "$r" sh -c "zstd -d -c -q '$file' | tar -xf - -C '$dir'" ;;
        vaultline)
            local job=corpus
            [ "$op" = restore-chain ] && job=chain
            measure "$op" vaultline "$r" "$vl" --config "$run/config.toml" -q restore latest --job "$job" --target "$dir" ;;
        restic) measure "$op" restic "$r" restic -q -r "$run/restic" restore latest --target "$dir" ;;
        borg)
            local name
            name=$(borg list --short --last 1 "$run/borg")
            measure "$op" borg "$r" sh -c "cd '$dir' && borg extract '$run/borg::$name'" ;;
    esac
}

tools=(base vaultline "${others[@]}")
echo "==> backups ($rounds rounds: ${tools[*]})"
for r in $(seq 1 "$rounds"); do
    has backup && for t in $(rotated "$r" "${tools[@]}"); do backup "$t" "$r" backup; done
    has backup-same && for t in $(rotated "$r" "${tools[@]}"); do backup "$t" "$r" backup-same; done
done
# The restores below read the repositories and the baseline file as the last
# round left them (all in the page cache on a machine with the memory for it).
if [ ! -f "$run/base.tar.zst" ]; then
    tar -cf - -C "$src" . | zstd -3 -T0 -q > "$run/base.tar.zst"
    vl backup corpus --full
fi
if has verify; then
    echo "==> verify"
    for r in $(seq 1 "$rounds"); do
        for t in $(rotated "$r" base vaultline); do
            case $t in
                base) measure verify base "$r" sh -c "zstd -d -c -q '$run/base.tar.zst' > /dev/null" ;;
                vaultline) measure verify vaultline "$r" "$vl" --config "$run/config.toml" -q verify latest --job corpus ;;
            esac
        done
    done
fi
if has restore-tmpfs; then
    echo "==> restores into the tmpfs $shm"
    restorers=(base vaultline)
    for o in "${others[@]}"; do has backup && restorers+=("$o"); done
    for r in $(seq 1 "$rounds"); do
        for t in $(rotated "$r" "${restorers[@]}"); do
            restore "$t" "$r" restore-tmpfs "$shm/$t-$r"
            rm -rf "${shm:?}/$t-$r"
        done
    done
fi
if has restore-disk; then
    echo "==> restores onto the disk ($run)"
    # Outputs stay until the end of the phase: on ext4, creating files right
    # after deleting tens of thousands is several times slower for minutes.
    for r in $(seq 1 "$rounds"); do
        for t in $(rotated "$r" base vaultline); do restore "$t" "$r" restore-disk "$run/out-$t-$r"; done
    done
    rm -rf "$run"/out-*
fi
if has restore-chain; then
    echo "==> an incremental chain: full, mutate 5 %, incremental, mutate 5 %, incremental"
    cp -a "$src" "$run/chain-src"
    vl backup chain --full
    for s in 2 3; do
        bench/mutate-corpus.sh "$run/chain-src" 5 "$s" > /dev/null
        vl backup chain
    done
    tar -cf - -C "$run/chain-src" . | zstd -3 -T0 -q > "$run/chain.tar.zst"
    for r in $(seq 1 "$rounds"); do
        for t in $(rotated "$r" base vaultline); do
            restore "$t" "$r" restore-chain "$shm/chain-$t-$r"
            rm -rf "${shm:?}/chain-$t-$r"
        done
    done
fi

cp "$results" "$work/compare-last.tsv"
python3 - "$results" "$bytes" "$files" <<'PY'
import collections, statistics as st, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
nbytes, nfiles = int(sys.argv[2]), int(sys.argv[3])
runs = collections.defaultdict(dict)          # (op, tool) -> round -> (secs, cpu, rss)
for op, tool, r, secs, user, sys_, rss in rows:
    runs[(op, tool)][r] = (float(secs), float(user) + float(sys_), int(rss))
ops, tools = [], []
for op, tool, *_ in rows:
    ops += [op] if op not in ops else []
    tools += [tool] if tool not in tools else []
print(f"\ncorpus: {nfiles} files, {nbytes / 1e6:.1f} MB; medians of the rounds; ratio: per round "
      "tool time / baseline time, median [min-max]")
print(f"{'operation':15}{'tool':11}{'wall s':>8}{'CPU s':>8}{'MB/s':>8}{'peak RSS MiB':>14}  ratio to base")
for op in ops:
    base = runs.get((op, "base"), {})
    for tool in tools:
        got = runs.get((op, tool))
        if not got:
            continue
        secs = st.median(v[0] for v in got.values())
        cpu = st.median(v[1] for v in got.values())
        rss = max(v[2] for v in got.values()) / 1024
        ratios = [got[r][0] / base[r][0] for r in got if r in base and base[r][0] > 0]
        ratio = (f"{st.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"
                 if ratios and tool != "base" else "")
        print(f"{op:15}{tool:11}{secs:>8.2f}{cpu:>8.2f}{nbytes / 1e6 / secs:>8.0f}{rss:>14.1f}  {ratio}")
PY
