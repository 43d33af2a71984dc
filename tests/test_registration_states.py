"""Invariants over sequences of commands on labeled sets and web faces (a hypothesis state machine):
after every step, each stored vector equals a fresh embedding of its crop, nothing refers to a
registration, face or sample that is gone, and every command that ran left exactly one finished
row in `wb_runs`.

Fast by default (a few short sequences, derandomised); for a long run:

    WB_STATE_EXAMPLES=2000 python -m pytest -q tests/test_registration_states.py
"""

from __future__ import annotations

import inspect
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.conftest import MODELS
from workbench.curate.overlap import run_overlap
from workbench.demo.data import DemoSize, write_demo_data
from workbench.embed.compute import run_embed
from workbench.embed.models import ModelSpec, load_embedder
from workbench.embed.store import read_vectors
from workbench.errors import WorkbenchError
from workbench.formats.images import decode_crops
from workbench.governance.forget import run_forget
from workbench.governance.registrations import run_labeled_add, run_labeled_remove
from workbench.ingest.pipeline import run_ingest
from workbench.labeled import registry
from workbench.labeled.access import LabeledSet
from workbench.manifest.workspace import Workspace

EXAMPLES = int(os.environ.get("WB_STATE_EXAMPLES", "3"))
pytestmark = pytest.mark.timeout(0 if EXAMPLES > 100 else 600)  # a long run is one test: no limit
STEPS = int(os.environ.get("WB_STATE_STEPS", "8"))
MODEL = MODELS / "mobilefacenet_128d.onnx"
SIZE = DemoSize(labeled_identities=5, labeled_per_identity=3, unknown_identities=3, unknown_per_identity=2,
                overlap_identities=2, overlap_per_identity=2, near_duplicates=1, scenes=0)
DATA: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def data(tmp_path_factory):
    if not MODEL.is_file():
        pytest.skip(f"pretrained model not found at {MODEL} (set WB_MODELS or provide ../shared/models)")
    root = tmp_path_factory.mktemp("state-data")
    DATA[:] = [root / f"d{seed}" for seed in range(3)]
    for seed, folder in enumerate(DATA):
        write_demo_data(folder, SIZE, seed=seed)
    yield
    DATA.clear()


class Commands(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="wb-states-"))
        self.ws = Workspace.at(self.dir / "ws")
        self.spec = ModelSpec.parse(f"onnx:{MODEL}")
        self.finished = 0  # commands that opened a run

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self, call) -> None:
        before = self._runs()
        outcome = "ok"
        try:
            call()
        except WorkbenchError:
            outcome = "refused"
        event(f"{inspect.stack()[1].function}: {outcome}")  # coverage, in --hypothesis-show-statistics
        self.finished += self._runs() - before

    def _runs(self) -> int:
        if not self.ws.manifest_path.exists():
            return 0
        with self.ws.connect(read_only=True) as con:
            return con.execute("SELECT count(*) FROM runs").fetchone()[0]

    @rule(name=st.sampled_from(["S", "T"]), which=st.integers(0, 2), replace=st.booleans())
    def add(self, name: str, which: int, replace: bool) -> None:
        self._run(lambda: run_labeled_add(self.ws, name, DATA[which] / "labeled", fmt="rec",
                                          replace=replace))

    @rule(name=st.sampled_from(["S", "T"]))
    def remove(self, name: str) -> None:
        self._run(lambda: run_labeled_remove(self.ws, name))

    @rule(which=st.integers(0, 2))
    def ingest(self, which: int) -> None:
        self._run(lambda: run_ingest(self.ws, DATA[which] / "webfaces", aligned=True, workers=1))

    @rule(name=st.sampled_from(["unlabeled", "S", "T"]))
    def embed(self, name: str) -> None:
        self._run(lambda: run_embed(self.ws, model=self.spec, sets=[name], per_identity=2, workers=1))

    @rule(name=st.sampled_from(["S", "T"]))
    def overlap(self, name: str) -> None:
        self._run(lambda: run_overlap(self.ws, name, model=self.spec, workers=1))

    @rule(label=st.integers(0, SIZE.labeled_identities - 1))
    def forget(self, label: int) -> None:
        self._run(lambda: run_forget(self.ws, identity=str(label)))

    @invariant()
    def stored_vectors_are_fresh_embeddings(self) -> None:
        if not self.ws.manifest_path.exists():
            return
        with self.ws.connect(read_only=True) as con:
            if con.execute("SELECT count(*) FROM embedding_models").fetchone()[0] == 0:
                return
            faces = con.execute("SELECT face_id, crop_rel FROM faces ORDER BY face_id LIMIT 3").fetchall()
            crops = [(self.ws.root / rel).read_bytes() for _, rel in faces]
            ids = [f for f, _ in faces]
            for reg in registry.every(con):
                with LabeledSet(self.ws, con, reg.name) as labeled:
                    take = np.arange(min(3, len(labeled)))
                    ids += labeled.item_ids(take)
                    crops += [labeled.crop_bytes(int(p)) for p in take]
            found, stored = read_vectors(self.ws, con, self.spec.key, ids)
        if found.any():
            wanted = [c for c, f in zip(crops, found, strict=True) if f]
            fresh = load_embedder(self.spec).embed(decode_crops(wanted))
            assert np.allclose(stored, fresh, atol=1e-4)

    @invariant()
    def nothing_refers_to_what_is_gone(self) -> None:
        if not self.ws.manifest_path.exists():
            return
        with self.ws.connect(read_only=True) as con:
            live = {r.id for r in registry.every(con)}
            for table in ("centres", "calibrations", "overlap", "labeled_findings", "browse_datasets"):
                refs = {r[0] for r in con.execute(f"SELECT DISTINCT registration FROM {table} "
                                                  "WHERE registration IS NOT NULL").fetchall()}
                assert refs <= live, (table, refs - live)
            dangling = con.execute("""
                SELECT e.item_id FROM embeddings e
                LEFT JOIN faces f ON f.face_id = e.item_id
                LEFT JOIN (SELECT 'S:' || ls.registration || ':' || s.sample_idx AS item_id
                           FROM labeled_samples s JOIN labeled_sets ls ON ls.name = s.set_name) l
                    ON l.item_id = e.item_id
                WHERE f.face_id IS NULL AND l.item_id IS NULL LIMIT 3""").fetchall()
            assert dangling == []
            orphans = con.execute("SELECT count(*) FROM overlap ANTI JOIN faces USING (face_id)").fetchone()
            assert orphans[0] == 0
            for (path,) in con.execute("SELECT path FROM centres").fetchall():
                assert Path(path).is_file()

    @invariant()
    def one_finished_run_per_command(self) -> None:
        if not self.ws.manifest_path.exists():
            return
        with self.ws.connect(read_only=True) as con:
            rows = con.execute("SELECT status, count(*) FROM runs GROUP BY 1").fetchall()
        assert sum(n for _, n in rows) == self.finished
        assert {s for s, _ in rows} <= {"ok", "failed"}


Commands.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                                      derandomize=True, suppress_health_check=list(HealthCheck))
test_command_sequences_keep_the_manifest_true = Commands.TestCase
