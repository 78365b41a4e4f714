#!/usr/bin/env bash
# Backup and restore throughput through the local S3 + KMS server (moto over
# TLS on loopback), beside the local-store figures measured in the same run.
#
#   bench/s3.sh [SIZE_MB] [SEED] [ROUNDS]     (default: 1024 1 2)
#
# Each round backs up the corpus to a local repository and to an S3 bucket
# (KMS-wrapped keys), then restores each into a fresh directory; rounds
# alternate which store goes first, every timed phase starts after an untimed
# `sync`, and the median is reported, with vaultline's peak RSS per store.
# The S3 figures include moto itself (a single Python process on the same
# machine, storing objects in memory), so they measure the agent's S3 path
# under a slow peer, not AWS.
#
# Needs the test venv (.venv/, made by tests/run) for moto and boto3.
# Environment: BENCH_DIR (default /var/tmp/vaultline-bench), as for
# bench/backup-restore.sh (the corpus is shared).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
size=${1:-1024}
seed=${2:-1}
rounds=${3:-2}
work=${BENCH_DIR:-/var/tmp/vaultline-bench}
py=${VAULTLINE_TEST_PYTHON:-$root/.venv/bin/python}
mkdir -p "$work"

[ -x "$py" ] || { echo "bench: $py missing; run tests/run once to create .venv/" >&2; exit 2; }
for tool in /usr/bin/time python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 2; }
done

# shellcheck source=bench/common.sh
source bench/common.sh

run=$work/s3-run-$$
rm -rf "$run"
mkdir -p "$run"
cleanup() {
    [ -n "${moto_pid:-}" ] && kill "$moto_pid" 2>/dev/null
    rm -rf "$run"
}
trap cleanup EXIT

echo "==> starting the local S3 + KMS server"
"$py" tests/support/moto_server.py "$run" > "$run/moto.out" 2> "$run/moto.log" &
moto_pid=$!
for _ in $(seq 1 100); do
    grep -q READY "$run/moto.out" 2>/dev/null && break
    sleep 0.1
done
port=$(awk '/READY/ {print $2}' "$run/moto.out")
[ -n "$port" ] || { echo "bench: moto did not start:" >&2; cat "$run/moto.log" >&2; exit 1; }
endpoint=https://127.0.0.1:$port
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_EC2_METADATA_DISABLED=true
ctl() {
    AWS_ENDPOINT_URL=$endpoint AWS_CA_BUNDLE=$run/ca.pem AWS_DEFAULT_REGION=us-east-1 \
        "$py" tests/support/awsctl.py "$@"
}
ctl create-bucket vaultline-bench > /dev/null
key=$(ctl create-key | python3 -c 'import json,sys; print(json.load(sys.stdin)["arn"])')

job="[[jobs]]
name = \"corpus\"
paths = [\"$src\"]"
cat > "$run/local.toml" <<EOF
[agent]
host = "bench"
state-dir = "$run/state-local"
[repository]
type = "local"
path = "$run/repo"
[key]
storage = "file"
$job
EOF
cat > "$run/s3.toml" <<EOF
[agent]
host = "bench"
state-dir = "$run/state-s3"
[aws]
region = "us-east-1"
ca-bundle = "$run/ca.pem"
[repository]
type = "s3"
bucket = "vaultline-bench"
endpoint = "$endpoint"
path-style = true
[key]
provider = "kms"
key-id = "$key"
endpoint = "$endpoint"
$job
EOF
"$vl" --config "$run/local.toml" -q init > /dev/null
"$vl" --config "$run/s3.toml" -q init > /dev/null

warm() { tar -cf - -C "$src" . | cat > /dev/null; }
# Runs "$@" under /usr/bin/time; prints "SECONDS MAXRSS_KIB".
timed() {
    /usr/bin/time -f '%e %M' -o "$run/time.out" "$@" > /dev/null
    cat "$run/time.out"
}
declare -A secs rss
record() { # NAME SECONDS RSS
    secs[$1]="${secs[$1]:-} $2"; rss[$1]="${rss[$1]:-} $3"
}
backup() { # STORE
    warm; sync
    local s r
    read -r s r < <(timed "$vl" --config "$run/$1.toml" -q backup now --full)
    record "backup-$1" "$s" "$r"
}
restore() { # STORE ROUND
    mkdir "$run/out-$1-$2"; sync
    local s r
    read -r s r < <(timed "$vl" --config "$run/$1.toml" -q restore latest --target "$run/out-$1-$2")
    record "restore-$1" "$s" "$r"
    rm -rf "$run/out-$1-$2"
}
for i in $(seq 1 "$rounds"); do
    if [ $((i % 2)) -eq 1 ]; then order="local s3"; else order="s3 local"; fi
    for s in $order; do backup "$s"; done
    for s in $order; do restore "$s" "$i"; done
    echo "round $i done"
done

python3 - "$bytes" "${secs[backup-local]}" "${secs[backup-s3]}" "${secs[restore-local]}" \
    "${secs[restore-s3]}" "${rss[backup-local]}" "${rss[backup-s3]}" "${rss[restore-local]}" \
    "${rss[restore-s3]}" <<'PY'
import statistics as st, sys
mb = int(sys.argv[1]) / 1e6
s = [list(map(float, a.split())) for a in sys.argv[2:6]]
r = [max(map(float, a.split())) / 1024 for a in sys.argv[6:10]]
rate = lambda xs: mb / st.median(xs)
print()
print(f"input: {mb:.1f} MB")
print(f"{'':10}{'local MB/s':>12}{'S3 MB/s':>10}{'S3/local':>10}{'RSS local':>12}{'RSS S3':>10}")
for i, name in enumerate(["backup", "restore"]):
    lo, s3 = rate(s[2 * i]), rate(s[2 * i + 1])
    print(f"{name:10}{lo:>12.1f}{s3:>10.1f}{s3 / lo:>10.2f}{r[2 * i]:>9.1f}MiB{r[2 * i + 1]:>7.1f}MiB")
PY
