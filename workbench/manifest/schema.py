"""Versioned schema migrations for the manifest.

Tables are private (they may change between versions); the `wb_*` views in
`views.py` are the stable interface. Each migration runs in its own
transaction, so a crash leaves the manifest at the previous version.
"""

from __future__ import annotations

import duckdb

from workbench.manifest.query import one, transaction
from workbench.manifest.views import VIEWS

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "images, files, faces, runs",
        [
            "CREATE TABLE wb_meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
            """CREATE TABLE runs (
                run_id VARCHAR PRIMARY KEY,
                command VARCHAR NOT NULL,
                params JSON,
                versions JSON,
                started_at TIMESTAMP NOT NULL,
                ended_at TIMESTAMP,
                status VARCHAR NOT NULL,
                counts JSON,
                error VARCHAR
            )""",
            """CREATE TABLE images (
                image_id VARCHAR PRIMARY KEY,
                status VARCHAR NOT NULL,
                reason VARCHAR,
                width INTEGER,
                height INTEGER,
                format VARCHAR,
                phash UBIGINT,
                n_faces INTEGER,
                run_id VARCHAR
            )""",
            """CREATE TABLE files (
                path VARCHAR PRIMARY KEY,
                source VARCHAR NOT NULL,
                image_id VARCHAR,
                size BIGINT,
                mtime_ns BIGINT,
                reason VARCHAR,
                run_id VARCHAR
            )""",
            """CREATE TABLE faces (
                face_id VARCHAR PRIMARY KEY,
                image_id VARCHAR NOT NULL,
                face_index INTEGER NOT NULL,
                crop_rel VARCHAR NOT NULL,
                det_score REAL,
                bbox REAL[4],
                landmarks REAL[10],
                face_size REAL,
                blur REAL,
                brightness REAL,
                quality REAL,
                run_id VARCHAR
            )""",
        ],
    ),
    (
        2,
        "labeled sets: identities and sample index",
        [
            """CREATE TABLE labeled_sets (
                name VARCHAR PRIMARY KEY,
                path VARCHAR NOT NULL,
                format VARCHAR NOT NULL,
                aligned BOOLEAN NOT NULL,
                options JSON,
                n_identities INTEGER,
                n_images BIGINT,
                n_rejected BIGINT,
                registered_at TIMESTAMP,
                run_id VARCHAR
            )""",
            """CREATE TABLE labeled_identities (
                set_name VARCHAR NOT NULL,
                label INTEGER NOT NULL,
                identity VARCHAR NOT NULL,
                n_images INTEGER NOT NULL,
                PRIMARY KEY (set_name, label)
            )""",
            # No primary key: 5.8M rows per set, unique by construction, bulk-loaded.
            """CREATE TABLE labeled_samples (
                set_name VARCHAR NOT NULL,
                sample_idx BIGINT NOT NULL,
                label INTEGER,
                locator VARCHAR NOT NULL,
                status VARCHAR NOT NULL,
                reason VARCHAR,
                crop_rel VARCHAR,
                det_score REAL,
                quality REAL
            )""",
        ],
    ),
    (
        3,
        "embeddings, centres, duplicates, overlap, clusters, splits",
        [
            "ALTER TABLE faces ADD COLUMN crop_phash UBIGINT",
            """CREATE TABLE embedding_models (
                model_key VARCHAR PRIMARY KEY,
                kind VARCHAR NOT NULL,
                path VARCHAR NOT NULL,
                flip BOOLEAN NOT NULL,
                dim INTEGER NOT NULL,
                created_at TIMESTAMP
            )""",
            """CREATE TABLE embeddings (
                model_key VARCHAR NOT NULL,
                item_id VARCHAR NOT NULL,
                row BIGINT NOT NULL,
                PRIMARY KEY (model_key, item_id)
            )""",
            """CREATE TABLE centres (
                model_key VARCHAR NOT NULL,
                set_name VARCHAR NOT NULL,
                per_identity INTEGER NOT NULL,
                seed INTEGER NOT NULL,
                path VARCHAR NOT NULL,
                n_identities INTEGER NOT NULL,
                created_at TIMESTAMP,
                PRIMARY KEY (model_key, set_name, per_identity, seed)
            )""",
            """CREATE TABLE dups (
                face_id VARCHAR PRIMARY KEY,
                group_id VARCHAR NOT NULL,
                is_representative BOOLEAN NOT NULL,
                run_id VARCHAR
            )""",
            """CREATE TABLE clusters (
                face_id VARCHAR PRIMARY KEY,
                cluster_id VARCHAR NOT NULL,
                model_key VARCHAR NOT NULL,
                run_id VARCHAR
            )""",
            """CREATE TABLE overlap (
                face_id VARCHAR NOT NULL,
                labeled_set VARCHAR NOT NULL,
                nearest_label INTEGER,
                similarity REAL,
                score REAL,
                cluster_score REAL,
                decision VARCHAR NOT NULL,
                run_id VARCHAR,
                PRIMARY KEY (face_id, labeled_set)
            )""",
            """CREATE TABLE splits (
                image_id VARCHAR NOT NULL,
                face_id VARCHAR,
                split VARCHAR NOT NULL,
                reason VARCHAR,
                run_id VARCHAR
            )""",
        ],
    ),
    (
        4,
        "training runs",
        [
            """CREATE TABLE train_runs (
                run_id VARCHAR PRIMARY KEY,
                status VARCHAR NOT NULL,
                config JSON,
                data_snapshot JSON,
                versions JSON,
                step BIGINT,
                metrics JSON,
                artifacts_dir VARCHAR,
                created_at TIMESTAMP,
                updated_at TIMESTAMP
            )""",
        ],
    ),
    (
        5,
        "evaluations and per-face scores",
        # IF NOT EXISTS: for one commit (2f27aff) these two tables were part of migration 4, and
        # the schema-4 manifests it wrote already have them (tests/test_migrations.py, fixture v4).
        [
            """CREATE TABLE IF NOT EXISTS evaluations (
                eval_id VARCHAR PRIMARY KEY,
                run_id VARCHAR NOT NULL,
                metrics JSON,
                artifacts_dir VARCHAR,
                created_at TIMESTAMP
            )""",
            """CREATE TABLE IF NOT EXISTS scores (
                run_id VARCHAR NOT NULL,
                face_id VARCHAR NOT NULL,
                max_prob REAL,
                pred_label INTEGER,
                entropy REAL,
                PRIMARY KEY (run_id, face_id)
            )""",
        ],
    ),
    (
        6,
        "crawl frontier and provenance",
        [
            """CREATE TABLE crawl_urls (
                url VARCHAR PRIMARY KEY,
                kind VARCHAR NOT NULL,
                referrer VARCHAR,
                depth INTEGER NOT NULL,
                status VARCHAR NOT NULL,
                http_status INTEGER,
                final_url VARCHAR,
                fetched_at TIMESTAMP,
                bytes BIGINT,
                sha256 VARCHAR,
                content_type VARCHAR,
                robots VARCHAR,
                license VARCHAR,
                reason VARCHAR,
                attempts INTEGER NOT NULL DEFAULT 0,
                run_id VARCHAR
            )""",
        ],
    ),
    (
        7,
        "exports and erasures",
        [
            """CREATE TABLE exports (
                export_id VARCHAR PRIMARY KEY,
                split VARCHAR NOT NULL,
                format VARCHAR NOT NULL,
                labels VARCHAR NOT NULL,
                out VARCHAR NOT NULL,
                n_faces BIGINT NOT NULL,
                stale BOOLEAN NOT NULL DEFAULT false,
                created_at TIMESTAMP,
                run_id VARCHAR
            )""",
            "CREATE TABLE export_items (export_id VARCHAR NOT NULL, face_id VARCHAR NOT NULL)",
            """CREATE TABLE erasures (
                erasure_id VARCHAR PRIMARY KEY,
                requested_at TIMESTAMP NOT NULL,
                request VARCHAR NOT NULL,
                reason VARCHAR,
                images BIGINT,
                faces BIGINT,
                labeled_samples BIGINT,
                urls BIGINT,
                stale_exports BIGINT
            )""",
        ],
    ),
    (
        8,
        "reviews from the FiftyOne App, and the datasets synced there",
        [
            """CREATE TABLE reviews (
                face_id VARCHAR NOT NULL,
                tag VARCHAR NOT NULL,
                reviewed_at TIMESTAMP NOT NULL,
                source VARCHAR NOT NULL,
                run_id VARCHAR,
                PRIMARY KEY (face_id, tag)
            )""",
            """CREATE TABLE browse_datasets (
                name VARCHAR PRIMARY KEY,
                database VARCHAR NOT NULL,
                where_sql VARCHAR,
                score_run VARCHAR,
                n_samples BIGINT,
                synced_at TIMESTAMP,
                run_id VARCHAR
            )""",
        ],
    ),
    (
        9,
        "detector per face, calibrations per model, copies of labeled photos, redirect hops",
        [
            "ALTER TABLE faces ADD COLUMN detector VARCHAR",
            "ALTER TABLE overlap ADD COLUMN copy_of VARCHAR",
            "ALTER TABLE overlap ADD COLUMN copy_similarity REAL",
            "ALTER TABLE crawl_urls ADD COLUMN redirects VARCHAR[]",
            """CREATE TABLE calibrations (
                calibration_id VARCHAR PRIMARY KEY,
                kind VARCHAR NOT NULL,
                model_key VARCHAR NOT NULL,
                labeled_set VARCHAR NOT NULL,
                settings JSON NOT NULL,
                result JSON NOT NULL,
                created_at TIMESTAMP NOT NULL,
                run_id VARCHAR
            )""",
        ],
    ),
    (
        10,
        "findings of the labeled-set audit",
        [
            """CREATE TABLE labeled_findings (
                set_name VARCHAR NOT NULL,
                model_key VARCHAR NOT NULL,
                kind VARCHAR NOT NULL,
                sample_idx BIGINT,
                label INTEGER NOT NULL,
                other_label INTEGER,
                other_sample_idx BIGINT,
                other_name VARCHAR,
                score REAL NOT NULL,
                evidence JSON,
                run_id VARCHAR NOT NULL
            )""",
        ],
    ),
    (
        11,
        "registration ids: every fact derived from a labeled set names its registration",
        # Sets registered before ids keep id = name, so their vector keys S:<name>:<idx> stay valid.
        [
            "ALTER TABLE labeled_sets ADD COLUMN registration VARCHAR",
            "UPDATE labeled_sets SET registration = name",
            "ALTER TABLE centres ADD COLUMN registration VARCHAR",
            "UPDATE centres SET registration = set_name",
            "ALTER TABLE calibrations ADD COLUMN registration VARCHAR",
            "UPDATE calibrations SET registration = labeled_set",
            "ALTER TABLE overlap ADD COLUMN registration VARCHAR",
            "UPDATE overlap SET registration = labeled_set",
            "ALTER TABLE labeled_findings ADD COLUMN registration VARCHAR",
            "UPDATE labeled_findings SET registration = set_name",
            "ALTER TABLE browse_datasets ADD COLUMN registration VARCHAR",
            "ALTER TABLE erasures ADD COLUMN derived JSON",
        ],
    ),
    (
        12,
        "mirrored perceptual hashes: a copy flipped left to right is a near-duplicate",
        # Faces ingested before get theirs from their crops (`wb dedupe`); images keep NULL.
        [
            "ALTER TABLE images ADD COLUMN phash_mirror UBIGINT",
            "ALTER TABLE faces ADD COLUMN crop_phash_mirror UBIGINT",
        ],
    ),
    (
        13,
        "each face's context thumbnail: the photo around it, for copies that were reframed",
        # Faces ingested before have none; `wb dedupe` then finds their copies by embedding and hash.
        ["ALTER TABLE faces ADD COLUMN context BLOB"],
    ),
]


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, description VARCHAR, applied_at TIMESTAMP)"
    )
    row = one(con, "SELECT coalesce(max(version), 0) FROM schema_migrations")
    return int(row[0]) if row else 0


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Apply pending migrations and refresh the views (cheap, and never stale)."""
    version = current_version(con)
    pending = [m for m in MIGRATIONS if m[0] > version]
    for number, description, statements in pending:
        with transaction(con):
            for statement in statements:
                con.execute(statement)
            con.execute("INSERT INTO schema_migrations (version, description, applied_at) "
                        "VALUES (?, ?, now())", [number, description])
        version = number
    for statement in VIEWS:
        con.execute(statement)
    return version
