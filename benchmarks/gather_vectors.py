"""Gathering a set's stored vectors: `gather_rows` beside a plain memory map, same run.

    python benchmarks/gather_vectors.py [--file PATH --dim D] [--rows 2000000] [--share 0.85] [--runs 2]

Gathers a random `--share` of the file's rows, in random order, as float16 (what calibration,
overlap and the labeled audit do with a whole labeled set), in a fresh process each time, and
prints seconds and peak RSS of each way. The baseline is `np.memmap` read a block of rows at a
time, the store's way before `formats/mapped.py`: its peak includes every file page it touched.
Without `--file` it writes `--rows` random 128-d vectors to a file under /tmp first (once).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

ONE_RUN = """
import resource, sys, time
import numpy as np
from workbench.embed.store import gather_rows
path, dim, share, way = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
n = __import__("os").path.getsize(path) // (4 * dim)
rows = np.random.default_rng(0).permutation(n)[: int(n * share)]
start = time.perf_counter()
if way == "memmap":
    matrix = np.memmap(path, "<f4", mode="r").reshape(-1, dim)
    out = np.empty((len(rows), dim), np.float16)
    for s in range(0, len(rows), 65536):
        out[s : s + 65536] = matrix[rows[s : s + 65536]]
else:
    out = gather_rows(path, dim, rows, np.float16)
seconds = time.perf_counter() - start
check = np.memmap(path, "<f4", mode="r").reshape(-1, dim)[rows[:100]]
assert np.array_equal(out[:100], check.astype(np.float16))
print(seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, help="a store's vectors.f32 (default: random vectors)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--share", type=float, default=0.85)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    path = args.file
    if path is None:
        path = Path(f"/tmp/wb_gather_{args.rows}x{args.dim}.f32")
        if not path.exists():
            rng = np.random.default_rng(0)
            with open(path, "wb") as handle:  # in large writes, as an import leaves it
                for start in range(0, args.rows, 262_144):
                    block = rng.standard_normal((min(262_144, args.rows - start), args.dim), np.float32)
                    block.tofile(handle)
    with open(path, "rb") as handle:  # warm the page cache: both ways read from memory
        while handle.read(1 << 26):
            pass
    results: dict[str, list[tuple[float, float]]] = {"memmap": [], "gather_rows": []}
    for _ in range(args.runs):
        for way in results:  # interleaved: the machine's noise falls on both
            command = [sys.executable, "-c", ONE_RUN, str(path), str(args.dim), str(args.share), way]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
            results[way].append((float(out[0]), float(out[1])))
            print(f"{way:<12} {float(out[0]):7.1f} s  peak RSS {float(out[1]):6.2f} GiB", flush=True)
    base, new = ([statistics.median(v) for v in zip(*results[w], strict=True)] for w in results)
    print(f"gather_rows / memmap: time {new[0] / base[0]:.2f}x, peak RSS {new[1] / base[1]:.2f}x "
          f"({base[1]:.2f} -> {new[1]:.2f} GiB; medians of {args.runs})")


if __name__ == "__main__":
    main()
