#!/usr/bin/env python3
"""A small read-only FUSE file system whose reads fail, for the tests of
what a backup does when a disk (or a network file system) returns EIO.

Usage: failing_fs.py MOUNTPOINT

Files (all 0644, owned by the caller):
  good        20000 bytes that read fine
  bad         20000 bytes; a read reaching past byte 8192 fails with EIO
  bad-first   4096 bytes; its first read fails with EIO
  sub/also    12 bytes that read fine

Prints "READY" once mounted; unmounts and exits when its parent exits or
on SIGTERM. Needs fusepy and libfuse2 (tests/run installs both).
"""

import errno
import os
import signal
import stat
import sys
import threading
import time

from fuse import FUSE, FuseOSError, Operations

GOOD = bytes((i * 7 + 3) % 251 for i in range(20000))
BAD = bytes((i * 11 + 5) % 251 for i in range(20000))
FILES = {
    "/good": (GOOD, None),
    "/bad": (BAD, 8192),
    "/bad-first": (b"x" * 4096, 0),
    "/sub/also": (b"also fine.\n\n", None),
}
DIRS = {"/": ["good", "bad", "bad-first", "sub"], "/sub": ["also"]}
NOW = int(time.time())


class FailingFs(Operations):
    def getattr(self, path, fh=None):
        base = dict(st_uid=os.getuid(), st_gid=os.getgid(), st_atime=NOW, st_mtime=NOW, st_ctime=NOW)
        if path in DIRS:
            return dict(base, st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
        if path in FILES:
            return dict(base, st_mode=stat.S_IFREG | 0o644, st_nlink=1, st_size=len(FILES[path][0]))
        raise FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", ".."] + DIRS[path]

    def open(self, path, flags):
        if path not in FILES:
            raise FuseOSError(errno.ENOENT)
        return 0

    def read(self, path, size, offset, fh):
        data, fail_at = FILES[path]
        if fail_at is not None and offset + size > fail_at:
            if offset >= fail_at or fail_at == 0:
                raise FuseOSError(errno.EIO)
            size = fail_at - offset
        return data[offset : offset + size]


def main():
    mountpoint = sys.argv[1]
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, daemon=True).start()

    def ready():
        for _ in range(200):
            if os.path.exists(os.path.join(mountpoint, "good")):
                print("READY", flush=True)
                return
            time.sleep(0.05)

    threading.Thread(target=ready, daemon=True).start()
    # direct_io: the kernel asks us for every read instead of its page cache.
    FUSE(FailingFs(), mountpoint, foreground=True, ro=True, nothreads=True, direct_io=True)


if __name__ == "__main__":
    main()
