#!/usr/bin/env bash
# The fleet view at scale, against the local S3 server (moto over TLS on
# loopback): a bucket holding HOSTS simulated hosts × SNAPSHOTS snapshots of
# one job (a manifest and an archive each, tiny objects created directly by
# tests/support/fleet_fill.py, not by real backups), every 10th host stale.
# Times `vaultline fleet status` (listings only) at each parallelism and
# `vaultline fleet report` once, and reports the S3 requests each sent, as
# counted by vaultline's client (moto cannot count them), beside what one
# listing request costs the server.
#
#   bench/fleet.sh [HOSTS] [SNAPSHOTS] [PARALLEL...]   (default: 1000 30 1 8 16 32)
#
# moto is one Python process on the same machine, keeping every object in
# memory and filtering all of a bucket's keys for each listing, so the
# times measure the agent against a slow peer, not S3; the request counts
# are what S3 would bill. Needs the test venv (.venv/, made by tests/run).
# Environment: BENCH_DIR (default /var/tmp/vaultline-bench); VAULTLINE_BIN
# to use a built binary instead of building the release one.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
hosts=${1:-1000}
snapshots=${2:-30}
shift $(( $# > 2 ? 2 : $# ))
parallel=("$@")
[ "${#parallel[@]}" -gt 0 ] || parallel=(1 8 16 32)
work=${BENCH_DIR:-/var/tmp/vaultline-bench}
py=${VAULTLINE_TEST_PYTHON:-$root/.venv/bin/python}
mkdir -p "$work"

[ -x "$py" ] || { echo "bench: $py missing; run tests/run once to create .venv/" >&2; exit 2; }
command -v /usr/bin/time >/dev/null || { echo "bench: /usr/bin/time is required" >&2; exit 2; }

if [ -n "${VAULTLINE_BIN:-}" ]; then
    vl=$VAULTLINE_BIN
else
    echo "==> building vaultline (release)"
    cargo build --release --locked -q -p vaultline-agent
    vl=$root/target/release/vaultline
fi

run=$work/fleet-run-$$
rm -rf "$run"
mkdir -p "$run"
cleanup() {
    [ -n "${moto_pid:-}" ] && kill "$moto_pid" 2>/dev/null
    rm -rf "$run"
}
trap cleanup EXIT

echo "==> starting the local S3 server"
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
export AWS_ENDPOINT_URL=$endpoint AWS_CA_BUNDLE=$run/ca.pem AWS_DEFAULT_REGION=us-east-1
"$py" tests/support/awsctl.py create-bucket vaultline-fleet > /dev/null

echo "==> creating $hosts hosts × $snapshots snapshots ($(( hosts * snapshots * 2 )) objects)"
"$py" tests/support/fleet_fill.py vaultline-fleet --marker --hosts "$hosts" --snapshots "$snapshots" \
    --stale-every 10 > "$run/fill.json"
python3 -c 'import json,sys; f=json.load(open(sys.argv[1])); print("    %d objects in %s s" % (f["objects"], f["seconds"]))' \
    "$run/fill.json"
# What one listing costs the server itself (boto3, one host's prefix, one
# page): the floor under every request the scans below send.
"$py" - <<'PY'
import time, boto3
s3 = boto3.client("s3", region_name="us-east-1")
s3.list_objects_v2(Bucket="vaultline-fleet", Prefix="vaultline/fleet0000/")
t = time.monotonic()
for i in range(10):
    s3.list_objects_v2(Bucket="vaultline-fleet", Prefix=f"vaultline/fleet{i:04d}/")
print(f"    the server answers a one-page listing in {(time.monotonic() - t) / 10 * 1000:.0f} ms (boto3, sequential)")
PY
unset AWS_ENDPOINT_URL AWS_CA_BUNDLE AWS_DEFAULT_REGION

cat > "$run/fleet.toml" <<EOF
[agent]
host = "bench-auditor"
state-dir = "$run/state"
[aws]
region = "us-east-1"
ca-bundle = "$run/ca.pem"
[repository]
type = "s3"
bucket = "vaultline-fleet"
endpoint = "$endpoint"
path-style = true
[key]
storage = "file"
EOF

# Runs "$@" under /usr/bin/time; the command's stdout goes to $run/out.json.
# Prints "WALL_SECONDS MAXRSS_KIB". Exit 9 (stale hosts, as planted) is
# the expected outcome of `fleet status`.
timed() {
    local rc=0
    /usr/bin/time -f '%e %M' -o "$run/time.out" "$@" > "$run/out.json" 2> "$run/err.txt" || rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 9 ]; then
        echo "bench: $* failed ($rc):" >&2; cat "$run/err.txt" >&2; exit 1
    fi
    tail -n 1 "$run/time.out"
}

echo
printf '%-28s %9s %9s %10s %9s %9s %8s\n' command hosts stale objects listings requests seconds
for p in "${parallel[@]}"; do
    read -r wall rss < <(timed "$vl" --config "$run/fleet.toml" --json fleet status --max-age 36h --parallel "$p")
    python3 - "$run/out.json" "status --parallel $p" "$wall" "$rss" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
s, scan = v["summary"], v["scan"]
print(f"{sys.argv[2]:<28} {s['hosts']:>9} {s['stale_hosts']:>9} {scan['objects']:>10} {scan['listings']:>9} "
      f"{scan['s3_requests']:>9} {float(sys.argv[3]):>8.2f}   (scan {scan['seconds']:.2f} s, peak RSS "
      f"{int(sys.argv[4]) // 1024} MiB)")
PY
done
read -r wall rss < <(timed "$vl" --config "$run/fleet.toml" --json fleet report --html "$run/report.html" \
    --max-age 36h --parallel "${parallel[-1]}")
python3 - "$run/out.json" "report --parallel ${parallel[-1]}" "$wall" "$rss" "$run/report.html" <<'PY'
import json, os, sys
v = json.load(open(sys.argv[1]))
s = v["summary"]
print(f"{sys.argv[2]:<28} {s['hosts']:>9} {s['stale_hosts']:>9} {'':>10} {'':>9} {'':>9} {float(sys.argv[3]):>8.2f}"
      f"   (page {os.path.getsize(sys.argv[5]) // 1024} KiB, peak RSS {int(sys.argv[4]) // 1024} MiB)")
PY
