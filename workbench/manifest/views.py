"""The stable SQL interface: `wb_*` views documented in the README.

Columns of these views are only ever added, never renamed or removed.
Paths to artifacts are absolute: the workspace root recorded on the last
writable open is joined to the relative paths stored in the tables.
"""

VIEWS: list[str] = [
    """CREATE OR REPLACE VIEW wb_files AS
    SELECT f.path, f.source, f.image_id, f.size,
           coalesce(i.status, 'rejected') AS status,
           coalesce(f.reason, i.reason) AS reason
    FROM files f LEFT JOIN images i USING (image_id)""",
    """CREATE OR REPLACE VIEW wb_images AS
    WITH loc AS (
        SELECT image_id, min(path) AS path, arg_min(source, path) AS source,
               count(*) AS n_locations
        FROM files WHERE image_id IS NOT NULL GROUP BY image_id
    )
    SELECT i.image_id, loc.source, loc.path, i.status, i.reason, i.width, i.height,
           i.format, i.phash, i.n_faces, loc.n_locations
    FROM images i JOIN loc USING (image_id)
    UNION ALL
    SELECT NULL, source, path, 'rejected', reason, NULL, NULL, NULL, NULL, 0, 1
    FROM files WHERE image_id IS NULL""",
    """CREATE OR REPLACE VIEW wb_faces AS
    SELECT f.face_id, f.image_id,
           (SELECT value FROM wb_meta WHERE key = 'root') || '/' || f.crop_rel AS crop_path,
           f.det_score, f.bbox, f.landmarks, f.quality,
           f.face_index, f.face_index = 0 AS is_primary,
           f.face_size, f.blur, f.brightness, f.detector
    FROM faces f""",
    """CREATE OR REPLACE VIEW wb_labeled_sets AS
    SELECT name, path, format, aligned, n_identities, n_images, n_rejected, registered_at, run_id,
           registration, json_extract_string(options, '$.detector') AS detector
    FROM labeled_sets""",
    """CREATE OR REPLACE VIEW wb_labeled_identities AS
    SELECT set_name, label, identity, n_images FROM labeled_identities""",
    """CREATE OR REPLACE VIEW wb_labeled_samples AS
    SELECT s.set_name, s.sample_idx, s.label, i.identity, s.locator, s.status, s.reason,
           CASE WHEN s.crop_rel IS NULL THEN NULL
                ELSE (SELECT value FROM wb_meta WHERE key = 'root') || '/' || s.crop_rel END
               AS crop_path,
           s.det_score, s.quality
    FROM labeled_samples s
    LEFT JOIN labeled_identities i ON i.set_name = s.set_name AND i.label = s.label""",
    """CREATE OR REPLACE VIEW wb_overlap AS
    SELECT o.face_id, o.labeled_set, i.identity AS nearest_identity, o.similarity, o.score,
           o.decision, c.cluster_id, o.cluster_score, o.copy_of, o.copy_similarity,
           TRY_CAST(regexp_extract(o.copy_of, '[0-9]+$') AS BIGINT) AS copy_of_sample_idx
    FROM overlap o
    LEFT JOIN labeled_identities i ON i.set_name = o.labeled_set AND i.label = o.nearest_label
    LEFT JOIN clusters c USING (face_id)""",
    """CREATE OR REPLACE VIEW wb_embeddings AS
    SELECT e.model_key, m.kind AS model_kind, m.dim,
           CASE WHEN starts_with(e.item_id, 'S:') THEN NULL ELSE e.item_id END AS face_id,
           ls.name AS set_name,
           TRY_CAST(regexp_extract(e.item_id, '^S:.*:([0-9]+)$', 1) AS BIGINT) AS sample_idx
    FROM embeddings e JOIN embedding_models m USING (model_key)
    LEFT JOIN labeled_sets ls ON ls.registration = regexp_extract(e.item_id, '^S:(.*):[0-9]+$', 1)""",
    """CREATE OR REPLACE VIEW wb_calibrations AS
    SELECT calibration_id, kind, model_key, labeled_set, settings, result, created_at, run_id
    FROM calibrations""",
    """CREATE OR REPLACE VIEW wb_dups AS
    SELECT face_id, group_id, is_representative FROM dups""",
    """CREATE OR REPLACE VIEW wb_splits AS
    SELECT face_id, image_id, split, reason FROM splits""",
    """CREATE OR REPLACE VIEW wb_train_runs AS
    SELECT run_id, status, config, data_snapshot, step, metrics, artifacts_dir, created_at, updated_at
    FROM train_runs""",
    """CREATE OR REPLACE VIEW wb_evaluations AS
    SELECT eval_id, run_id, metrics, artifacts_dir, created_at FROM evaluations""",
    """CREATE OR REPLACE VIEW wb_scores AS
    SELECT s.run_id, s.face_id, s.max_prob, i.identity AS pred_identity, s.entropy
    FROM scores s
    JOIN train_runs r USING (run_id)
    LEFT JOIN labeled_identities i
        ON i.set_name = json_extract_string(r.config, '$.labeled') AND i.label = s.pred_label""",
    """CREATE OR REPLACE VIEW wb_crawl AS
    SELECT url, kind, referrer, depth, status, http_status, final_url, fetched_at, bytes, sha256,
           content_type, robots, license, reason, attempts, redirects
    FROM crawl_urls""",
    """CREATE OR REPLACE VIEW wb_provenance AS
    SELECT c.sha256 AS image_id, c.url, c.final_url, c.referrer, c.http_status, c.fetched_at, c.bytes,
           c.robots, coalesce(c.license, p.license) AS license
    FROM crawl_urls c LEFT JOIN crawl_urls p ON p.url = c.referrer
    WHERE c.kind = 'image' AND c.status = 'done'""",
    """CREATE OR REPLACE VIEW wb_exports AS
    SELECT export_id, split, format, labels, out, n_faces, stale, created_at FROM exports""",
    """CREATE OR REPLACE VIEW wb_erasures AS
    SELECT erasure_id, requested_at, request, reason, images, faces, labeled_samples, urls,
           stale_exports
    FROM erasures""",
    """CREATE OR REPLACE VIEW wb_reviews AS
    SELECT face_id, tag, reviewed_at, source FROM reviews""",
    """CREATE OR REPLACE VIEW wb_browse_datasets AS
    SELECT name, database, where_sql, score_run, n_samples, synced_at FROM browse_datasets""",
    """CREATE OR REPLACE VIEW wb_runs AS
    SELECT run_id, command, params, versions, started_at, ended_at, status, counts, error
    FROM runs""",
    """CREATE OR REPLACE VIEW wb_labeled_findings AS
    SELECT f.set_name, f.sample_idx, s.locator, f.kind, f.score, f.label, i.identity,
           f.other_label, o.identity AS other_identity, f.other_sample_idx, f.other_name,
           f.evidence, f.model_key, f.run_id
    FROM labeled_findings f
    LEFT JOIN labeled_samples s ON s.set_name = f.set_name AND s.sample_idx = f.sample_idx
    LEFT JOIN labeled_identities i ON i.set_name = f.set_name AND i.label = f.label
    LEFT JOIN labeled_identities o ON o.set_name = f.set_name AND o.label = f.other_label""",
]
