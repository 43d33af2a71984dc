"""Ray against the local process pool at the same cores, a simulated two-node cluster, and the
driver's memory as the input grows.

    python benchmarks/ray_scaling.py [--images 5000] [--small 10000] [--large 100000]
        [--work /tmp/ray_scaling] [--model onnx:../shared/models/mobilefacenet_128d.onnx]

Runs itself inside a private network namespace (`unshare -n`, loopback only),
where Ray can talk only to itself. Measured, each with `wb` as a user runs it:
- ingest (YuNet detection) and embedding (MobileFaceNet) of lfw150 photos:
  images/s with 2 worker processes, with a local Ray instance of 2 CPUs, and
  on two 1-CPU Ray nodes; the ratio of Ray's time to the pool's (target <= 1.3),
  from the runs' own timing (Ray up) and from the wall clock (Ray's start in);
- the driver's peak RSS ingesting `--small` and `--large` synthetic aligned
  crops through Ray (target: within 1.5x).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def in_private_network() -> None:
    """Re-run this script inside a network namespace with only loopback (once)."""
    if os.environ.get("WB_PRIVATE_NETWORK") == "1":
        return
    if shutil.which("unshare") is None:
        sys.exit("unshare not found: Ray must not reach the machine's network; run as root on Linux")
    command = "ip link set lo up && exec " + " ".join([sys.executable, *map(_quote, sys.argv)])
    os.execvpe("unshare", ["unshare", "-n", "sh", "-c", command], {**os.environ, "WB_PRIVATE_NETWORK": "1"})


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def wb(*args: str) -> tuple[dict, float, int]:
    """Run `wb ... --json`; (result, seconds, the driver's peak RSS in bytes)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "workbench", *args, "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    peak = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"wb {' '.join(args)} failed:\n{err}")
    return json.loads(out), time.perf_counter() - started, peak


def run_seconds(ws: Path, command: str) -> float:
    """How long the command's run took by the manifest: from the manifest's opening (after Ray
    has started or been joined) to its last commit."""
    import duckdb

    con = duckdb.connect(str(ws / "manifests" / "wb.duckdb"), read_only=True)
    try:
        return con.execute("SELECT epoch(ended_at - started_at) FROM runs WHERE command = ? "
                           "ORDER BY started_at DESC LIMIT 1", [command]).fetchone()[0]
    finally:
        con.close()


def photos(lfw: Path, count: int, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(p for person in sorted(lfw.iterdir()) for p in sorted(person.iterdir()))[:count]
    for path in files:
        target = out / f"{path.parent.name}__{path.name}"
        if not target.exists():
            target.symlink_to(path)
    return out


def synthetic_crops(count: int, out: Path) -> Path:
    """`count` distinct 112x112 JPEG 'aligned crops' (smooth noise), in folders of 1000."""
    rng = np.random.default_rng(count)
    for i in range(count):
        path = out / f"{i // 1000:04d}" / f"{i:07d}.jpg"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            Image.fromarray(small).resize((112, 112), Image.Resampling.BILINEAR).save(path, quality=80)
    return out


def two_nodes() -> Any:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1"})
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    return cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="lfw150 photos (it has 4,906)")
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--lfw", type=Path, default=SHARED / "data" / "lfw150")
    parser.add_argument("--detector", default=f"yunet:{SHARED / 'models' / 'yunet_s_640_640.onnx'}")
    parser.add_argument("--model", default=f"onnx:{SHARED / 'models' / 'mobilefacenet_128d.onnx'}")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ray_scaling"))
    args = parser.parse_args()
    in_private_network()
    folder = photos(args.lfw, args.images, args.work / "photos")
    results: dict[str, dict] = {}
    for arm in ("pool", "ray", "two nodes"):
        cluster = two_nodes() if arm == "two nodes" else None
        how = {"pool": ["--workers", "2"], "ray": ["--ray", "local", "--workers", "2"]}.get(arm) or \
            ["--ray", cluster.address]
        try:
            ws = args.work / f"ws-{arm.replace(' ', '-')}"
            shutil.rmtree(ws, ignore_errors=True)
            ingested, ingest_s, _ = wb("ingest", str(folder), "-w", str(ws), "--detector", args.detector,
                                       *how)
            embedded, embed_s, _ = wb("embed", "--model", args.model, "-w", str(ws), *how)
        finally:
            if cluster is not None:
                cluster.shutdown()
        results[arm] = {"ingest_images_per_s": ingested["processed"] / ingest_s,
                        "embed_faces_per_s": embedded["unlabeled_computed"] / embed_s,
                        "ingest_run_images_per_s": ingested["processed"] / run_seconds(ws, "ingest"),
                        "embed_run_faces_per_s": embedded["unlabeled_computed"] / run_seconds(ws, "embed"),
                        "nodes": len(ingested.get("ray_nodes", {})) or 1}
    memory = {}
    for count in (args.small, args.large):
        crops = synthetic_crops(count, args.work / f"crops-{count}")
        ws = args.work / f"ws-memory-{count}"
        shutil.rmtree(ws, ignore_errors=True)
        ingested, seconds, peak = wb("ingest", str(crops), "--aligned", "-w", str(ws), "--ray", "local",
                                     "--workers", "2")
        memory[count] = {"peak_rss_mib": peak / 2**20, "images_per_s": ingested["processed"] / seconds}
    print(f"{'arm':10s} {'ingest img/s':>13s} {'embed faces/s':>14s}   wall (Ray's start in) | run only")
    for arm, r in results.items():
        print(f"{arm:10s} {r['ingest_images_per_s']:13.1f} {r['embed_faces_per_s']:14.1f}   | "
              f"{r['ingest_run_images_per_s']:7.1f} {r['embed_run_faces_per_s']:7.1f}")
    for step, wall, run in (("ingest", "ingest_images_per_s", "ingest_run_images_per_s"),
                            ("embed", "embed_faces_per_s", "embed_run_faces_per_s")):
        ratio = results["pool"][run] / results["ray"][run]
        print(f"{step}: Ray takes {ratio:.2f}x the pool's time at 2 cores "
              f"once started (target <= 1.3), {results['pool'][wall] / results['ray'][wall]:.2f}x with its "
              f"start; two 1-CPU nodes {results['pool'][run] / results['two nodes'][run]:.2f}x")
    small, large = memory[args.small], memory[args.large]
    print(f"driver peak RSS: {args.small:,} files {small['peak_rss_mib']:.0f} MiB, {args.large:,} files "
          f"{large['peak_rss_mib']:.0f} MiB: ratio {large['peak_rss_mib'] / small['peak_rss_mib']:.2f} "
          f"(target <= 1.5); aligned ingest through Ray {large['images_per_s']:.0f} images/s")
    (args.work / "results.json").write_text(json.dumps({"arms": results, "memory": memory}, indent=1))


if __name__ == "__main__":
    main()
