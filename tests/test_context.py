"""Context thumbnails: the photo around a face in the face's frame, compared after registration."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.conftest import SHARED, shared_model
from workbench.curate.dedupe import CONTEXT_SEARCH
from workbench.curate.pairs import DedupeThresholds
from workbench.faces.align import ARCFACE_TEMPLATE, CROP_SIZE
from workbench.faces.context import (
    SEARCH_BLUR,
    SIZE,
    SPAN,
    aligned_context,
    best_correlations,
    context_thumbnail,
    context_vectors,
    mirrored,
    pair_correlations,
    registered_correlation,
)
from workbench.faces.copies import edit_photo
from workbench.faces.detectors import DetectorSpec, get_detector
from workbench.ingest.decode import decode_image

CELEBA10K = SHARED / "data" / "celeba10k"


def texture(seed: int, size: int = 240) -> np.ndarray:
    """A grey photo with structure at several scales (no face needed: landmarks are given)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((size, size), np.float32)
    for cells in (4, 8, 16):
        out += cv2.resize(rng.uniform(0, 1, (cells, cells)).astype(np.float32), (size, size),
                          interpolation=cv2.INTER_CUBIC)
    return cv2.normalize(out, None, 20, 235, cv2.NORM_MINMAX).astype(np.uint8)


def test_an_aligned_crop_covers_the_middle_of_its_thumbnail():
    """The thumbnail spans SPAN template pixels: an aligned 112 px crop fills the middle
    112/SPAN of each side, and what lies outside the photo is 0."""
    crop = np.full((CROP_SIZE, CROP_SIZE), 120, np.uint8)
    thumb = aligned_context(crop).reshape(SIZE, SIZE)
    side = SIZE * CROP_SIZE // SPAN  # 16
    inner = slice((SIZE - side) // 2 + 1, (SIZE + side) // 2 - 1)  # edge pixels are partly covered
    assert (thumb[inner, inner] == 120).all()
    assert (thumb > 0).sum() <= side * side and (thumb[0] == 0).all() and (thumb[:, -1] == 0).all()
    # a crop stored at another size means the same frame
    big = aligned_context(cv2.resize(crop, (224, 224)))
    assert ((big > 0) == (thumb.ravel() > 0)).all()


def test_registration_absorbs_landmark_jitter_of_a_rescaled_reframed_copy():
    """A copy cut and rescaled, whose landmarks came back 1.5 px off (a small face re-detected):
    the landmarks alone misregister it; the registered correlation finds it near 1, while
    another photo stays far below."""
    photo = texture(0)
    landmarks = ARCFACE_TEMPLATE * 0.5 + np.array([90.0, 80.0])  # a small face: eyes ~18 px apart
    original = context_thumbnail(photo, landmarks)
    scale = 0.7
    copy = cv2.resize(photo[10:, 6:], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    jitter = np.array([[1.5, -1.0], [-1.0, 1.5], [0.5, 1.5], [-1.5, -0.5], [1.0, 1.0]])
    moved = context_thumbnail(copy, (landmarks - np.array([6.0, 10.0])) * scale + jitter)
    other = context_thumbnail(texture(1), landmarks)
    plain = np.corrcoef(original.astype(float), moved.astype(float))[0, 1]
    registered = registered_correlation(original, moved)
    assert registered >= 0.97 and registered > plain + 0.05
    assert registered_correlation(original, other) < 0.6


def test_a_mirrored_copy_correlates_as_its_mirror():
    photo = texture(2)
    landmarks = ARCFACE_TEMPLATE + np.array([60.0, 50.0])
    flipped = photo[:, ::-1]
    width = photo.shape[1] - 1
    flipped_landmarks = np.array([[width - x, y] for x, y in landmarks])[[1, 0, 2, 4, 3]]  # image left first
    a, b = context_thumbnail(photo, landmarks), context_thumbnail(flipped, flipped_landmarks)
    assert registered_correlation(a, b) < 0.8  # as it is, a mirror is another picture
    assert registered_correlation(a, mirrored(b[None])[0]) > 0.97
    pair = np.stack([a, b]), np.array([0]), np.array([1])
    assert pair_correlations(*pair)[0] < 0.8 and pair_correlations(*pair, mirror=True)[0] > 0.97
    assert best_correlations(*pair)[0] == pair_correlations(*pair, mirror=True)[0]


def low_passed(thumb: np.ndarray) -> np.ndarray:
    """A fully covered thumbnail blurred as the search blurs it, by OpenCV, borders normalised."""
    image = thumb.reshape(SIZE, SIZE).astype(np.float64)
    blur = {"ksize": (9, 9), "sigmaX": SEARCH_BLUR, "borderType": cv2.BORDER_CONSTANT}
    return (cv2.GaussianBlur(image, **blur) / cv2.GaussianBlur(np.ones_like(image), **blur)).ravel()


def test_vectors_correlate_as_the_low_passed_pixels_do_where_both_cover_everything():
    """Search vectors: inner products equal the Pearson correlation of the low-passed thumbnails."""
    rng = np.random.default_rng(4)
    thumbs = rng.integers(1, 256, (3, SIZE * SIZE), dtype=np.uint8)
    vectors = context_vectors(thumbs).astype(np.float64)
    expected = np.corrcoef(np.stack([low_passed(t) for t in thumbs]))
    assert np.allclose(vectors @ vectors.T, expected, atol=2e-3)  # float16 storage


def test_a_copy_a_pixel_off_stays_near_its_photo_in_the_search():
    """Fine detail moved by a pixel (landmarks re-found a pixel off) no longer correlates sharp;
    low-passed, the copy stays above the search's floor and another picture stays far below it."""
    rng = np.random.default_rng(6)
    photo = rng.integers(1, 256, (SIZE, SIZE + 1), dtype=np.uint8)
    original, copy = photo[:, :-1].ravel(), photo[:, 1:].ravel()
    other = rng.integers(1, 256, SIZE * SIZE, dtype=np.uint8)
    assert np.corrcoef(original.astype(float), copy.astype(float))[0, 1] < 0.2
    vectors = context_vectors(np.stack([original, copy, other])).astype(np.float64)
    assert vectors[0] @ vectors[1] >= CONTEXT_SEARCH
    assert abs(vectors[0] @ vectors[2]) < 0.3


def test_thumbnails_sharing_too_little_are_no_evidence():
    """Two thumbnails that share too little around their faces say nothing (-1), however alike:
    an aligned crop has nothing around its face, and two faces alone correlate as faces do."""
    a = np.zeros((SIZE, SIZE), np.uint8)
    b = np.zeros((SIZE, SIZE), np.uint8)
    a[:, : SIZE // 2] = texture(3, SIZE)[:, : SIZE // 2]
    b[:, SIZE // 2 - 4 :] = texture(3, SIZE)[:, SIZE // 2 - 4 :]  # 4 columns shared: 1/8
    assert registered_correlation(a.ravel(), b.ravel()) == -1.0
    assert registered_correlation(a.ravel(), a.ravel()) == pytest.approx(1.0, abs=1e-5)
    face = aligned_context(cv2.resize(texture(4), (CROP_SIZE, CROP_SIZE)))
    assert registered_correlation(face, face) == -1.0  # an aligned crop: nothing around its face
    filling = np.zeros((SIZE, SIZE), np.uint8)  # a face that fills its photo: a 1-pixel ring around
    filling[7:25, 7:25] = texture(5, SIZE)[7:25, 7:25]
    assert registered_correlation(filling.ravel(), filling.ravel()) == -1.0
    wider = np.zeros((SIZE, SIZE), np.uint8)  # the same photo, with a frame of it around the face
    wider[3:29, 3:29] = texture(5, SIZE)[3:29, 3:29]
    assert registered_correlation(wider.ravel(), wider.ravel()) == pytest.approx(1.0, abs=1e-5)


def test_reframed_copies_of_real_small_photos_correlate_above_other_photos():
    """celeba10k's 89x109 web faces, copied as the web copies them (cropped, rescaled, toned,
    saved at quality 40-80, sometimes rotated, mirrored or captioned) and re-detected by YuNet:
    the default context threshold finds the copies, and hardly any photo reaches it with another."""
    if not (CELEBA10K / "labels.csv").is_file():
        pytest.skip(f"small faces not found at {CELEBA10K}")
    detect = get_detector(DetectorSpec.parse(f"yunet:{shared_model('yunet_s_640_640.onnx')}")).detect
    with open(CELEBA10K / "labels.csv") as handle:
        names = [row["file"] for row in csv.DictReader(handle)][:60]
    rng = np.random.default_rng(0)
    originals, copies = [], []
    for name in names:
        rgb = np.asarray(Image.open(CELEBA10K / "images" / name).convert("RGB"))
        edited = edit_photo(rgb, "mixed", rng)
        found, found_copy = detect(rgb), detect(edited)
        if not found or not found_copy:
            continue
        originals.append(context_thumbnail(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), found[0].landmarks))
        copies.append(context_thumbnail(cv2.cvtColor(edited, cv2.COLOR_RGB2GRAY), found_copy[0].landmarks))
    n = len(originals)
    assert n >= 55
    thumbs = np.concatenate([np.stack(originals), np.stack(copies)])
    own = best_correlations(thumbs, np.arange(n), np.arange(n) + n)  # a sixth of them mirrored
    assert (own >= DedupeThresholds.context).mean() >= 0.9
    # near a decision, which of the two is registered onto the other does not matter
    plain = pair_correlations(thumbs, np.arange(n), np.arange(n) + n)
    near = (plain >= 0.9) & (plain < 0.995)
    assert near.sum() >= 10
    assert np.array_equal(pair_correlations(thumbs, np.arange(n) + n, np.arange(n))[near], plain[near])
    i, j = np.triu_indices(n, 1)
    others = best_correlations(thumbs, i, j)
    assert (others >= DedupeThresholds.context).sum() <= 1
    assert np.median(own) > np.quantile(others, 0.999) + 0.05


@pytest.mark.slow
def test_ingest_stores_each_faces_thumbnail_as_its_photo_and_landmarks_give_it(tmp_path, lfw_dir):
    """What `wb ingest` stores is the thumbnail of the photo at the stored landmarks (rounded to
    0.01 px, so within a few grey levels), for every face, the second face of a photo too."""
    from tests.helpers import manifest_rows, wb_json

    photos = sorted(lfw_dir.glob("*/*.jpg"))[:12]
    web = tmp_path / "web"
    web.mkdir()
    for photo in photos:
        (web / photo.name).symlink_to(photo)
    ws = str(tmp_path / "ws")
    yunet = shared_model("yunet_s_640_640.onnx")
    assert wb_json("ingest", str(web), "--detector", f"yunet:{yunet}", "-w", ws)["faces"] >= 12
    rows = manifest_rows(ws, "SELECT regexp_extract(i.path, '[^/]+$'), f.landmarks, f.context "
                             "FROM faces f JOIN wb_images i USING (image_id)")
    assert len(rows) >= 12
    for name, landmarks, context in rows:
        gray = cv2.imread(str(web / name), cv2.IMREAD_GRAYSCALE)
        fresh = context_thumbnail(gray, np.array(landmarks).reshape(5, 2))
        stored = np.frombuffer(context, np.uint8)
        assert ((stored > 0) == (fresh > 0)).mean() > 0.99
        assert np.abs(stored.astype(int) - fresh.astype(int))[fresh > 0].max() <= 3


@pytest.mark.slow
def test_an_aligned_crops_thumbnail_is_its_own(tmp_path, aligned_folder):
    from tests.helpers import manifest_rows, wb_json

    ws = str(tmp_path / "ws")
    assert wb_json("ingest", str(aligned_folder), "--aligned", "-w", ws)["faces"] == 12
    rows = manifest_rows(ws, "SELECT i.path, f.context FROM faces f JOIN wb_images i USING (image_id)")
    for path, context in rows:
        gray = cv2.cvtColor(decode_image(Path(path).read_bytes()).rgb, cv2.COLOR_RGB2GRAY)  # as ingest does
        assert np.frombuffer(context, np.uint8).tolist() == aligned_context(gray).tolist()


def test_search_vectors_are_the_same_made_a_block_at_a_time():
    thumbs = np.random.default_rng(5).integers(0, 256, (10, SIZE * SIZE), dtype=np.uint8)
    assert np.array_equal(context_vectors(thumbs, block=3), context_vectors(thumbs))


def test_dedupe_registers_candidates_in_worker_processes_as_it_would_in_one(monkeypatch):
    """Registrations run in batches over worker processes, a bounded number in flight: the pairs
    found are those one process finds, each copy with its photo."""
    from workbench.curate import dedupe
    from workbench.parallel import process_mapper

    monkeypatch.setattr(dedupe, "CONTEXT_BATCH", 7)  # many batches and rounds from few pairs
    monkeypatch.setattr(dedupe, "CONTEXT_ROUND", 2)
    landmarks = ARCFACE_TEMPLATE * 0.5 + np.array([90.0, 80.0])
    photos = [texture(seed) for seed in range(20, 32)]
    jitter = np.random.default_rng(8).normal(0, 1.0, (len(photos), 5, 2))
    thumbs = np.stack([context_thumbnail(p, landmarks) for p in photos] +
                      [context_thumbnail(cv2.resize(p, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_AREA),
                                         landmarks * 0.8 + jitter[k]) for k, p in enumerate(photos)])
    alone = dedupe.context_pairs(thumbs, DedupeThresholds())
    with process_mapper(2, chunksize=1) as mapper:
        pooled = dedupe.context_pairs(thumbs, DedupeThresholds(), mapper=mapper)
    for one, many in zip(alone, pooled, strict=True):
        assert np.array_equal(one, many)
    n = len(photos)
    assert {(k, k + n) for k in range(n)} <= set(zip(alone[0].tolist(), alone[1].tolist(), strict=True))


def test_a_copy_whose_face_is_near_is_registered_where_the_thumbnail_search_missed_it():
    """A tiny copy's landmarks came back 9 px off (2.5 thumbnail pixels): its search vector falls
    under `CONTEXT_SEARCH` and it is no candidate, though registered it correlates near 1. Near
    its photo by embedding (`faces_near`) it is registered and found; a near face whose photo
    is another stays apart."""
    from workbench.curate import dedupe

    landmarks = ARCFACE_TEMPLATE * 0.5 + np.array([90.0, 80.0])
    photo = texture(44)
    thumbs = np.stack([context_thumbnail(photo, landmarks), context_thumbnail(photo, landmarks + 9.0),
                       *(context_thumbnail(texture(seed), landmarks) for seed in range(50, 58))])
    vectors = context_vectors(thumbs[:2]).astype(np.float64)
    assert dedupe.CONTEXT_WITH_FACE <= vectors[0] @ vectors[1] < CONTEXT_SEARCH
    assert registered_correlation(thumbs[0], thumbs[1]) >= DedupeThresholds().context

    def found(**near) -> set[tuple[int, int]]:
        i, j, _ = dedupe.context_pairs(thumbs, DedupeThresholds(), **near)
        return set(zip(i.tolist(), j.tolist(), strict=True))

    assert (0, 1) not in found()
    with_faces = found(faces_near=(np.array([0, 2]), np.array([1, 3])))
    assert (0, 1) in with_faces and (2, 3) not in with_faces
