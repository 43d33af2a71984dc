"""The embedding store: append-only vectors keyed in the manifest, torn writes, erasure by zeros."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from workbench.embed import store as store_module
from workbench.embed.models import ModelSpec
from workbench.embed.store import EmbeddingStore, read_vectors
from workbench.errors import WorkbenchError
from workbench.manifest.query import transaction
from workbench.manifest.workspace import Workspace

DIM = 4


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path / "ws")


@pytest.fixture
def spec(tmp_path) -> ModelSpec:
    weights = tmp_path / "model.onnx"
    weights.write_bytes(b"stand-in weights: only their hash names the model")
    return ModelSpec("onnx", str(weights))


def vectors(n: int, start: int = 0) -> np.ndarray:
    return np.arange(start * DIM, (start + n) * DIM, dtype=np.float32).reshape(n, DIM)


def test_a_torn_write_is_trimmed_and_every_committed_vector_reads_back(ws, spec):
    ids = [f"face{i}" for i in range(5)]
    with ws.connect() as con:
        store = EmbeddingStore(ws, con, spec, DIM)
        with transaction(con):
            store.append(ids[:3], vectors(3))
    with open(store.path, "ab") as handle:  # a crash after 6 bytes of the next row, before its commit
        handle.write(b"\x01" * 6)
    with ws.connect() as con:
        store = EmbeddingStore(ws, con, spec, DIM)
        assert store.missing(ids) == ids[3:]
        with transaction(con):
            store.append(ids[3:], vectors(2, start=3))
        assert store.path.stat().st_size == 5 * DIM * 4
        assert np.array_equal(store.vectors(ids), vectors(5))
        assert store.rows(ids).tolist() == [0, 1, 2, 3, 4]


def test_vectors_read_back_in_any_order_as_float16_a_block_at_a_time(ws, spec, monkeypatch):
    ids = [f"face{i}" for i in range(5)]
    with ws.connect() as con:
        store = EmbeddingStore(ws, con, spec, DIM)
        with transaction(con):
            store.append(ids, vectors(5))
        monkeypatch.setattr(store_module, "GATHER_ROWS", 2)
        order = [4, 0, 3, 1, 2]
        half = store.vectors([ids[i] for i in order], np.float16)
        assert half.dtype == np.float16 and np.array_equal(half, vectors(5)[order].astype(np.float16))
        assert np.array_equal(store.vectors([ids[i] for i in order]), vectors(5)[order])


def test_rows_appended_in_a_rolled_back_transaction_are_never_referenced(ws, spec):
    with ws.connect() as con:
        store = EmbeddingStore(ws, con, spec, DIM)
        with pytest.raises(RuntimeError), transaction(con):
            store.append(["lost"], vectors(1))
            raise RuntimeError("crash before commit")
        assert store.missing(["lost"]) == ["lost"]
        with transaction(con):
            store.append(["kept"], vectors(1, start=7))
        assert store.rows(["kept"]).tolist() == [1]  # after the orphan row, which stays unread
        assert np.array_equal(store.vectors(["kept"]), vectors(1, start=7))


def test_zero_erases_one_item_under_every_model_and_leaves_the_rest(ws, spec, tmp_path):
    other_weights = tmp_path / "other.onnx"
    other_weights.write_bytes(b"other model")
    other = ModelSpec("onnx", str(other_weights))
    gone, kept = "S:r0123456789abcde:3", "face1"
    with ws.connect() as con:
        for model in (spec, other):
            with transaction(con):
                EmbeddingStore(ws, con, model, DIM).append([kept, gone], vectors(2, start=1))
        assert EmbeddingStore.zero(ws, con, [gone]) == 2
        for model in (spec, other):
            found, got = read_vectors(ws, con, model.key, [kept, gone, "never-embedded"])
            assert found.tolist() == [True, True, False]
            assert np.array_equal(got, np.stack([vectors(1, start=1)[0], np.zeros(DIM, np.float32)]))


def test_a_dimension_change_under_one_model_key_is_refused(ws, spec):
    with ws.connect() as con:
        EmbeddingStore(ws, con, spec, DIM)
        with pytest.raises(WorkbenchError, match="4-d vectors, it now gives 8-d"):
            EmbeddingStore(ws, con, spec, 8)


GATHER_PEAK = """
import sys
import numpy as np
from workbench.embed import store
from workbench.formats import mapped
mapped.RESIDENT_BYTES = int(sys.argv[3])
def status_mib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) // 1024
rows = np.random.default_rng(0).permutation(int(sys.argv[2]))
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # the peak (VmHWM) starts again from the present
before = status_mib("VmRSS:")
out = store.gather_rows(sys.argv[1], 128, rows, np.float16)
print(status_mib("VmHWM:") - before, int(out[5, 0]) == int(rows[5]) % 1024)
"""


@pytest.mark.slow  # two fresh processes: 4 s
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc")
def test_gathering_every_vector_does_not_keep_the_file_resident(tmp_path):
    """MS1MV2 at 512-d is a 14 GB vector file: gathering it as float16 (7 GB) must not also leave
    the file's 14 GB in the peak resident set that memory limits see."""
    n, path = 131_072, tmp_path / "vectors.f32"  # 64 MiB of float32; 32 MiB gathered as float16
    values = np.repeat(np.arange(n, dtype="<f4")[:, None] % 1024, 128, axis=1)
    values.tofile(path)
    grown = {}
    for release in (4 << 20, 1 << 40):  # every 4 MiB read; never
        result = subprocess.run([sys.executable, "-c", GATHER_PEAK, str(path), str(n), str(release)],
                                capture_output=True, text=True, check=True)
        mib, right = result.stdout.split()
        assert right == "True"
        grown[release] = int(mib)
    assert grown[4 << 20] < 32 + 32  # the output, its sort order and a few MiB of pages at a time
    assert grown[1 << 40] >= 32 + 64  # the measure sees the whole file where nothing is let go
