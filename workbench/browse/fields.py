"""The facts about a face that browse shows and `--where` filters on: one table, every use generated.

Each field has a name (a column of `face_facts` and, when it has a kind, a
FiftyOne sample field), the SQL that computes it over the stable views, its
kind (which FiftyOne field type holds it) and a line of help. The selection
query, the sample schema, the plain-value map of the writer and the `--where`
help all come from FIELDS, so a new fact is one line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FaceField:
    name: str
    sql: str  # over f (wb_faces), i (wb_images), s (wb_splits), dg, ov, sc (see FACTS_SQL)
    kind: str | None  # text | number | int | bool | points; None: not a plain sample field
    help: str


FIELDS: tuple[FaceField, ...] = (
    FaceField("face_id", "f.face_id", "text", "the face's id in the manifest"),
    FaceField("image_id", "f.image_id", "text", "sha256 of the image file"),
    FaceField("crop_path", "f.crop_path", None, "the aligned 112x112 crop (the sample's filepath)"),
    FaceField("source", "i.source", "text", "where the image came from (ingest --source)"),
    FaceField("original_path", "i.path", "text", "the image as ingested"),
    FaceField("is_primary", "f.is_primary", "bool", "the largest, most confident face of its image"),
    FaceField("quality", "f.quality", "number", "size x sharpness x exposure, in [0, 1]"),
    FaceField("face_box", "f.bbox", "points", "detection box in the image (x1, y1, x2, y2)"),
    FaceField("face_landmarks", "f.landmarks", "points", "five landmarks in the image (x, y pairs)"),
    FaceField("split", "s.split", "text", "train_unlabeled, eval_unknown or excluded"),
    FaceField("exclusion_reason", "s.reason", "text", "why an excluded face is excluded"),
    FaceField("dup_group", "dg.group_id", "text", "near-duplicate group (its representative's face id)"),
    FaceField("dup_representative", "dg.is_representative", "bool", "the face kept from its group"),
    FaceField("dup_group_size", "dg.group_size", "int", "faces in the duplicate group"),
    FaceField("overlap_set", "ov.overlap_set", "text", "labeled set of the nearest identity"),
    FaceField("overlap_identity", "ov.overlap_identity", None, "nearest labeled identity"),
    FaceField("overlap_similarity", "ov.overlap_similarity", None, "cosine to that identity's centre"),
    FaceField("overlap_score", "ov.overlap_score", "number", "calibrated overlap score"),
    FaceField("overlap_decision", "ov.overlap_decision", "text", "copy, overlap, ambiguous or clean"),
    FaceField("max_prob", "sc.max_prob", "number", "max softmax probability under the scored run"),
    FaceField("pred_identity", "sc.pred_identity", None, "the scored run's most likely identity"),
    FaceField("entropy", "sc.entropy", "number", "softmax entropy under the scored run"),
)
NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
# sample field -> (label column, confidence column), shown as Classifications in the App
LABELS = {
    "overlap": ("overlap_identity", "overlap_similarity"),
    "predicted": ("pred_identity", "max_prob"),
}
PLAIN: tuple[str, ...] = tuple(f.name for f in FIELDS if f.kind is not None)

FACTS_SQL = """
WITH ov AS (
    SELECT face_id,
           arg_max(labeled_set, score) AS overlap_set,
           arg_max(nearest_identity, score) AS overlap_identity,
           arg_max(similarity, score) AS overlap_similarity,
           max(score) AS overlap_score,
           CASE WHEN bool_or(decision = 'copy') THEN 'copy'
                WHEN bool_or(decision = 'overlap') THEN 'overlap'
                WHEN bool_or(decision = 'ambiguous') THEN 'ambiguous'
                ELSE 'clean' END AS overlap_decision
    FROM wb_overlap GROUP BY face_id
), dg AS (
    SELECT face_id, group_id, is_representative, count(*) OVER (PARTITION BY group_id) AS group_size
    FROM wb_dups
), sc AS (
    SELECT face_id, max_prob, pred_identity, entropy FROM wb_scores WHERE run_id = $score_run
)
SELECT """ + ",\n       ".join(f"{f.sql} AS {f.name}" for f in FIELDS) + """
FROM wb_faces f
JOIN wb_images i USING (image_id)
LEFT JOIN wb_splits s USING (face_id)
LEFT JOIN dg USING (face_id)
LEFT JOIN ov USING (face_id)
LEFT JOIN sc USING (face_id)
"""


def where_help() -> str:
    """The `--where` option's help: the columns a condition may use."""
    names = ", ".join(f.name for f in FIELDS if f.kind != "points")
    return (f"SQL condition choosing the faces, on: {names}. "
            "Example: \"split = 'excluded' AND quality > 0.5\".")


def sample_schema(fo: Any) -> dict[str, tuple[Any, dict[str, Any]]]:
    """FiftyOne field types, declared up front so fields exist before any face has a value."""
    types = {"text": (fo.StringField, {}), "number": (fo.FloatField, {}), "int": (fo.IntField, {}),
             "bool": (fo.BooleanField, {}), "points": (fo.ListField, {"subfield": fo.FloatField})}
    schema = {f.name: types[f.kind] for f in FIELDS if f.kind is not None}
    schema |= {name: (fo.EmbeddedDocumentField, {"embedded_doc_type": fo.Classification}) for name in LABELS}
    return schema
