#!/usr/bin/env python3
"""Fills a bucket with a simulated fleet for the fleet view's tests and
benchmark: objects created directly with boto3 under the repository's names
(docs/FORMAT.md section 12), not by real backups. Bodies are filler bytes of
fixed sizes, so a test knows exactly what each job stores.

  fleet_fill.py BUCKET [options]

  --prefix P            repository prefix (default vaultline)
  --marker              also write PREFIX/repository.json
  --hosts N             hosts named fleet0000, fleet0001, ... (default 0)
  --host NAME           a host with this exact name (repeatable)
  --first N             number the generated hosts from N (default 0)
  --jobs a,b            jobs per host (default etc)
  --snapshots S         snapshots per job (default 30)
  --interval-hours H    between snapshots (default 24)
  --newest-hours H      age of the newest snapshot (default 1)
  --stale-every K       every K-th host's newest snapshot is --stale-hours old
  --stale-hours H       (default 72)
  --future-every F      every F-th host also gets a manifest claiming a year ahead
  --manifest-bytes B    (default 64)
  --archive-bytes B     (default 256)
  --workers W           hosts written at once (default 16)

Endpoint, CA bundle and credentials come from the environment, as for
awsctl.py. Prints {"objects": N, "bytes": B, "hosts": [...], "seconds": T}.
Host i (counting from --first) is stale when K divides i, future-dated when
F divides i; named hosts count on after the generated ones.
"""

import argparse
import datetime
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config


def snapshot_id(at, serial):
    # The agent's shape: UTC second, then 3 hex digits of milliseconds and
    # 5 random ones (here: a serial, so runs are reproducible).
    return at.strftime("%Y%m%dT%H%M%SZ") + "-000" + f"{serial & 0xFFFFF:05x}"


def plan(args, now):
    """The hosts, and every (key, body) to write, in groups written one
    after the other (a host's objects in the order its runs would have
    written them: oldest snapshot first, archive before manifest), the
    groups in parallel."""
    names = [f"fleet{args.first + i:04d}" for i in range(args.hosts)] + list(args.host)
    jobs = [j for j in args.jobs.split(",") if j]
    base = f"{args.prefix}/" if args.prefix else ""
    groups = []
    if args.marker:
        marker = {
            "vaultline_repository": 2,
            "key_provider": "local",
            "key_id": "00000000000000000000000000000000",
            "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        groups.append([(f"{base}repository.json", json.dumps(marker).encode())])
    serial = 0
    for n, host in enumerate(names):
        i = args.first + n
        stale = args.stale_every and i % args.stale_every == 0
        newest = args.stale_hours if stale else args.newest_hours
        future = args.future_every and i % args.future_every == 0
        objects = []
        for job in jobs:
            times = [
                now - datetime.timedelta(hours=newest + k * args.interval_hours)
                for k in reversed(range(args.snapshots))
            ]
            if future:
                times.append(now + datetime.timedelta(days=365))
            for at in times:
                serial += 1
                sid = snapshot_id(at, serial)
                objects.append((f"{base}{host}/{job}/archives/{sid}/0.archive", b"a" * args.archive_bytes))
                objects.append((f"{base}{host}/{job}/snapshots/{sid}.manifest", b"m" * args.manifest_bytes))
        groups.append(objects)
    return names, groups


def main():
    p = argparse.ArgumentParser()
    p.add_argument("bucket")
    p.add_argument("--prefix", default="vaultline")
    p.add_argument("--marker", action="store_true")
    p.add_argument("--hosts", type=int, default=0)
    p.add_argument("--host", action="append", default=[])
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--jobs", default="etc")
    p.add_argument("--snapshots", type=int, default=30)
    p.add_argument("--interval-hours", type=float, default=24)
    p.add_argument("--newest-hours", type=float, default=1)
    p.add_argument("--stale-every", type=int, default=0)
    p.add_argument("--stale-hours", type=float, default=72)
    p.add_argument("--future-every", type=int, default=0)
    p.add_argument("--manifest-bytes", type=int, default=64)
    p.add_argument("--archive-bytes", type=int, default=256)
    p.add_argument("--workers", type=int, default=16)
    args = p.parse_args()

    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    names, groups = plan(args, now)
    s3 = boto3.client("s3", region_name="us-east-1", config=Config(max_pool_connections=args.workers))
    started = time.monotonic()

    def put(group):
        for key, body in group:
            s3.put_object(Bucket=args.bucket, Key=key, Body=body)

    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        for _ in pool.map(put, groups):
            pass
    objects = [o for g in groups for o in g]
    print(
        json.dumps(
            {
                "objects": len(objects),
                "bytes": sum(len(b) for _, b in objects),
                "hosts": names,
                "seconds": round(time.monotonic() - started, 2),
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
