#!/usr/bin/env python3
"""Writes every packet of protocol/vectors/*.json as one file of a libFuzzer seed corpus.

Usage: seed.py OUT_DIR
"""
import json
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
vectors = os.path.join(here, "..", "..", "protocol", "vectors")
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
count = 0
for name in ("valid.json", "invalid.json"):
    with open(os.path.join(vectors, name)) as f:
        for i, v in enumerate(json.load(f)["vectors"]):
            with open(os.path.join(out, f"{name[:-5]}-{i:03d}"), "wb") as g:
                g.write(bytes.fromhex(v["hex"]))
            count += 1
print(f"{count} seeds in {out}")
