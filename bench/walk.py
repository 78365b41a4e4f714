#!/usr/bin/env python3
"""A plain scandir + lstat walk of a tree (the baseline a no-change backup
is compared with in bench/chunks.sh, as in the issue that set the target):
every entry listed with os.scandir and lstat-ed, directories entered,
symlinks not followed. Prints the number of entries."""
import os
import sys


def walk(path):
    n = 0
    with os.scandir(path) as it:
        for e in it:
            os.lstat(e.path)
            n += 1
            if e.is_dir(follow_symlinks=False):
                n += walk(e.path)
    return n


print(walk(sys.argv[1]))
