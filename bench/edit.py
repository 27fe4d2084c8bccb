#!/usr/bin/env python3
"""Writes a copy of a file with seeded small edits: insertions and overwrites of 1-4 KiB
at random offsets, like a second nightly backup. Usage: edit.py IN OUT [EDITS] [SEED]"""
import random
import sys

src, dst = sys.argv[1], sys.argv[2]
edits = int(sys.argv[3]) if len(sys.argv) > 3 else 300
rng = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 42)
data = bytearray(open(src, "rb").read())
for _ in range(edits):
    at = rng.randrange(0, len(data) - 8192)
    blob = rng.randbytes(rng.randint(1024, 4096))
    if rng.random() < 0.5:
        data[at:at] = blob
    else:
        data[at:at + len(blob)] = blob
open(dst, "wb").write(data)
