"""RecordIO read speed beside the floor of plain `read()` of the same bytes.

    python benchmarks/recordio.py [--records 200000] [--dir /tmp/recbench]

Writes a file of 112x112 JPEGs in InsightFace layout, then measures sequential
(key order) and random-access reads through the workbench reader, each with
the image bytes unpacked (zero-copy views), beside plain `read()` of the whole
file in 8 MiB blocks, all from the page cache (a cold disk read is the same
floor for both). Target: sequential >= 50% of the floor's MB/s.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from workbench.formats.recordio import RecordIOReader, rec_layout, write_insightface_rec


def make_file(path: Path, records: int) -> None:
    rng = np.random.default_rng(0)
    pool = []
    for _ in range(256):
        pixels = rng.integers(0, 256, (14, 14, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).resize((112, 112), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
        pool.append(buf.getvalue())
    per_id = 50
    write_insightface_rec(path, ((i // per_id, pool[i % len(pool)]) for i in range(records)))


def floor(path: Path) -> float:
    start = time.perf_counter()
    total = 0
    with open(path, "rb", buffering=0) as handle:
        while block := handle.read(8 << 20):
            total += len(block)
    return time.perf_counter() - start


def read_keys(path: Path, order: str) -> tuple[float, int, int]:
    with RecordIOReader(path) as reader:
        keys = rec_layout(reader).image_keys
        if order == "random":
            keys = np.random.default_rng(1).permutation(keys)
        start = time.perf_counter()
        nbytes = 0
        for _, _, image in reader.iter_images(keys):
            nbytes += len(image)
        return time.perf_counter() - start, len(keys), nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "train.rec"
        make_file(path, args.records)
        size_mb = path.stat().st_size / 1e6
        print(f"{args.records} records, {size_mb:.0f} MB, page cache warm, best of {args.repeat}")
        floor_s = min(floor(path) for _ in range(args.repeat))
        seq = min(read_keys(path, "sequential") for _ in range(args.repeat))
        rand = min(read_keys(path, "random") for _ in range(args.repeat))
        floor_mbs = size_mb / floor_s
        print(f"floor read():  {floor_mbs:8.0f} MB/s")
        for name, (seconds, n, _) in (("sequential", seq), ("random", rand)):
            print(f"{name + ':':<14} {size_mb / seconds:8.0f} MB/s  {n / seconds:10.0f} records/s  "
                  f"ratio {(size_mb / seconds) / floor_mbs:.2f}")

if __name__ == "__main__":
    main()
