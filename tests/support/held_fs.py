#!/usr/bin/env python3
"""A small read-only FUSE file system with a file whose read is held, for
the tests of a backup interrupted in the middle of a run: the test knows
exactly where the run is when it sends the signal.

Usage: held_fs.py MOUNTPOINT RELEASE

Files (all 0644, owned by the caller):
  a-before   64 KiB that read fine (archived before the held file)
  held       64 KiB; the first read prints "HELD" on stdout and waits until
             the path RELEASE exists, then reads fine
  z-after    64 KiB that read fine

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

SIZE = 64 * 1024
FILES = {
    "/a-before": bytes((i * 7 + 3) % 251 for i in range(SIZE)),
    "/held": bytes((i * 13 + 1) % 251 for i in range(SIZE)),
    "/z-after": bytes((i * 5 + 2) % 251 for i in range(SIZE)),
}
NOW = int(time.time())


class HeldFs(Operations):
    def __init__(self, release):
        self.release_path = release
        self.held = False

    def getattr(self, path, fh=None):
        base = dict(st_uid=os.getuid(), st_gid=os.getgid(), st_atime=NOW, st_mtime=NOW, st_ctime=NOW)
        if path == "/":
            return dict(base, st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
        if path in FILES:
            return dict(base, st_mode=stat.S_IFREG | 0o644, st_nlink=1, st_size=SIZE)
        raise FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", ".."] + [p[1:] for p in FILES]

    def open(self, path, flags):
        if path not in FILES:
            raise FuseOSError(errno.ENOENT)
        return 0

    def read(self, path, size, offset, fh):
        if path == "/held" and not self.held:
            self.held = True
            print("HELD", flush=True)
            while not os.path.exists(self.release_path):
                time.sleep(0.05)
        return FILES[path][offset : offset + size]


def main():
    mountpoint, release = sys.argv[1], sys.argv[2]
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
            if os.path.exists(os.path.join(mountpoint, "a-before")):
                print("READY", flush=True)
                return
            time.sleep(0.05)

    threading.Thread(target=ready, daemon=True).start()
    # direct_io: the kernel asks us for every read instead of its page cache.
    FUSE(HeldFs(release), mountpoint, foreground=True, ro=True, nothreads=True, direct_io=True)


if __name__ == "__main__":
    main()
