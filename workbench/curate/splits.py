"""`wb split`: curated splits of the unlabeled data, deterministic for a seed.

- `excluded` with a reason, first that applies: the image has no usable face
  (`no face`, or the image's rejection reason); a reviewer's `not_face`,
  `overlap` or `duplicate` tag; `copy of a labeled photo`, `overlap` or
  `ambiguous overlap` with a labeled set (unless reviewed `wrong_identity`), its own or that of any
  face of its duplicate group (one photo: a copy of a known person's photo is that person, whichever
  copy represents the group); `duplicate` (not its group's representative) or `low quality`
  (unless reviewed `keep`). See `workbench.manifest.reviews` for the tags.
- `eval_unknown`: whole clusters of clean faces held out for rejection tests, so
  no photo of a held-out person is trained on.
- `train_unlabeled`: the remaining clean representatives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from workbench.errors import WorkbenchError
from workbench.faces.quality import MIN_QUALITY
from workbench.manifest.query import one, transaction
from workbench.manifest.reviews import verdicts_view
from workbench.manifest.runs import open_run
from workbench.manifest.workspace import Workspace
from workbench.results import Result


def choose_eval_clusters(cluster_sizes: dict[str, int], fraction: float, seed: int) -> set[str]:
    """Clusters, in a seeded random order, until they hold `fraction` of the faces."""
    names = sorted(cluster_sizes)
    order = np.random.default_rng(seed).permutation(len(names))
    target = fraction * sum(cluster_sizes.values())
    chosen, total = set(), 0
    for i in order:
        if total >= target:
            break
        chosen.add(names[i])
        total += cluster_sizes[names[i]]
    return chosen


@dataclass
class SplitResult(Result):
    """`wb split`: faces per split, exclusions per reason, and the settings used."""

    splits: dict[str, int]
    excluded_by_reason: dict[str, int]
    eval_unknown_clusters: int
    eval_unknown: float
    seed: int
    min_quality: float
    run_id: str
    warnings: list[str] = field(default_factory=list)


def split_warnings(counts: dict[str, int], reasons: dict[str, int]) -> list[str]:
    """A line when nothing is left to train UIR on, naming the main reasons and what to do."""
    if counts.get("train_unlabeled", 0) or not counts:
        return []
    top = ", ".join(f"{n} {why}" for why, n in list(reasons.items())[:3])
    return [f"no face is left in train_unlabeled ({top}): `wb train --uir` has nothing to push "
            "away; check the overlap threshold (`wb audit overlap`), --min-quality and --eval-unknown"]


def run_split(workspace: Workspace, *, eval_unknown: float = 0.1, seed: int = 0,
              min_quality: float = MIN_QUALITY) -> SplitResult:
    """`wb split`: assign every image to `train_unlabeled`, `eval_unknown` or `excluded` (with a reason).

    Needs `wb dedupe` and `wb overlap` first; reviews decide before automatic reasons. Returns
    `SplitResult`; raises `WorkbenchError` when a prerequisite is missing or an option is out of range."""
    if not 0 <= eval_unknown < 1:
        raise WorkbenchError("--eval-unknown must be in [0, 1)")
    params = {"eval_unknown": eval_unknown, "seed": seed, "min_quality": min_quality}
    with open_run(workspace, "split", params) as (con, run):
        n_dups = one(con, "SELECT count(*) FROM dups")[0]
        n_overlap = one(con, "SELECT count(*) FROM overlap")[0]
        n_faces = one(con, "SELECT count(*) FROM faces")[0]
        if n_faces and not n_dups:
            raise WorkbenchError("no duplicate groups yet: run `wb dedupe` first")
        if n_faces and not n_overlap:
            raise WorkbenchError("no overlap decisions yet: run `wb overlap --labeled NAME` first")
        with transaction(con):
            con.execute("DELETE FROM splits")
            con.execute("""
                INSERT INTO splits (image_id, face_id, split, reason, run_id)
                SELECT i.image_id, NULL, 'excluded', coalesce(i.reason, 'no face'), ?
                FROM images i WHERE i.status <> 'ok'""", [run.run_id])
            verdicts = verdicts_view(con)
            con.execute(f"""
                CREATE OR REPLACE TEMP TABLE face_reasons AS
                WITH per_face AS (
                    SELECT f.face_id, f.image_id, any_value(c.cluster_id) AS cluster_id,
                        coalesce(any_value(d.group_id), f.face_id) AS dup_group,
                        any_value(r.excluded_reason) AS reviewed_reason,
                        coalesce(any_value(r.lifts_identity), false) AS lifted,
                        CASE
                            WHEN bool_or(o.decision = 'copy') THEN 1
                            WHEN bool_or(o.decision = 'overlap') THEN 2
                            WHEN bool_or(o.decision = 'ambiguous') THEN 3
                        END AS decision,
                        CASE
                            WHEN any_value(r.lifts_auto) THEN NULL
                            WHEN NOT any_value(coalesce(d.is_representative, true)) THEN 'duplicate'
                            WHEN any_value(f.quality) < ? THEN 'low quality'
                        END AS auto_reason
                    FROM faces f
                    LEFT JOIN overlap o USING (face_id)
                    LEFT JOIN dups d USING (face_id)
                    LEFT JOIN clusters c USING (face_id)
                    LEFT JOIN {verdicts} r USING (face_id)
                    GROUP BY f.face_id, f.image_id),
                grouped AS (
                    SELECT *, min(CASE WHEN NOT lifted THEN decision END)
                                  OVER (PARTITION BY dup_group) AS group_decision
                    FROM per_face)
                SELECT face_id, image_id, cluster_id,
                    CASE
                        WHEN reviewed_reason IS NOT NULL THEN reviewed_reason
                        WHEN lifted THEN NULL
                        WHEN group_decision = 1 THEN 'copy of a labeled photo'
                        WHEN group_decision = 2 THEN 'overlap'
                        WHEN group_decision = 3 THEN 'ambiguous overlap'
                    END AS identity_reason,
                    auto_reason,
                    coalesce(identity_reason, auto_reason) AS reason
                FROM grouped""", [min_quality])
            sizes = dict(con.execute(
                "SELECT coalesce(cluster_id, face_id), count(*) FROM face_reasons "
                "WHERE reason IS NULL GROUP BY 1").fetchall())
            held_out = sorted(choose_eval_clusters(sizes, eval_unknown, seed))
            con.execute("CREATE OR REPLACE TEMP TABLE held_out (cluster VARCHAR)")
            if held_out:
                con.executemany("INSERT INTO held_out (cluster) VALUES (?)", [[c] for c in held_out])
            con.execute("""
                INSERT INTO splits (image_id, face_id, split, reason, run_id)
                SELECT image_id, face_id,
                    CASE WHEN reason IS NOT NULL THEN 'excluded'
                         WHEN coalesce(cluster_id, face_id) IN (SELECT cluster FROM held_out)
                             THEN 'eval_unknown'
                         ELSE 'train_unlabeled' END,
                    reason, ?
                FROM face_reasons""", [run.run_id])
        counts = dict(con.execute("SELECT split, count(*) FROM splits GROUP BY split").fetchall())
        reasons = dict(con.execute("SELECT reason, count(*) FROM splits WHERE split = 'excluded' "
                                   "GROUP BY reason ORDER BY 2 DESC").fetchall())
        result = SplitResult(splits=counts, excluded_by_reason=reasons, eval_unknown_clusters=len(held_out),
                             **params, run_id=run.run_id, warnings=split_warnings(counts, reasons))
        run.counts = result.as_dict()
        return result
