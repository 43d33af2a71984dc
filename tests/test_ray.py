"""Ray scale-out. Ray advertises and connects to the machine's interface address, so its cases
(`tests/ray_cases.py`) run inside a private network namespace where only loopback exists:
this test re-executes pytest there (`unshare -n`, loopback up) and skips where it cannot."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import manifest_rows

ROOT = Path(__file__).resolve().parents[1]


def private_network_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
def test_ray_cases_in_a_private_network():
    if importlib.util.find_spec("ray") is None:
        pytest.skip('Ray is not installed (pip install -e ".[ray]")')
    if not private_network_available():
        pytest.skip("no private network namespace here (unshare -n needs root or user namespaces): "
                    "Ray would talk to the machine's interface address, so its tests do not run")
    command = (f"ip link set lo up && exec {sys.executable} -m pytest -q -p no:cacheprovider "
               "tests/ray_cases.py")
    proc = subprocess.run(["unshare", "-n", "sh", "-c", command], cwd=ROOT, capture_output=True, text=True,
                          timeout=1500, env={**os.environ, "WB_PRIVATE_NETWORK": "1"})
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]
    assert " passed" in proc.stdout and " skipped" not in proc.stdout, proc.stdout[-2000:]


def test_without_ray_installed_the_error_names_the_extra(tmp_path):
    fake = tmp_path / "no-ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    (tmp_path / "img").mkdir()
    env_path = f"{fake.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    proc = subprocess.run([sys.executable, "-m", "workbench", "ingest", str(tmp_path / "img"), "--ray",
                           "local", "-w", str(tmp_path / "ws")], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": env_path})
    assert proc.returncode == 1 and 'pip install -e ".[ray]"' in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    manifest = tmp_path / "ws" / "manifests" / "wb.duckdb"
    assert not manifest.exists() or manifest_rows(tmp_path / "ws", "SELECT count(*) FROM runs") == [(0,)]
