"""The photo around a face, in the face's own frame: evidence of a copy that survives reframing.

A web copy of a small photo (cropped a few percent, rescaled, toned, saved at
low quality) moves everything the other evidence looks at: its face comes back
aligned a pixel or two off, so the embedding and the crop's hash drift, and
the reframing moves the whole photo's hash as far as another person's photo.
What a copy keeps is its content in the face's frame: hair, clothes and
background stand where they stood relative to the eyes and mouth. So each
face carries a small grey thumbnail of the photo warped by its alignment (the
face and as much again around it, `SPAN` template pixels on a side); two
thumbnails are compared after a refining affine registration (OpenCV's ECC),
which absorbs the landmark jitter, by their normalised correlation over the
pixels both photos cover, as they are and one mirrored (a flipped copy). Copies
correlate as the same pixels do (JPEG and resampling noise); two photos of one
person, taken apart, differ in pose, light and surroundings.

Measured on celeba10k (89x109 web faces, YuNet-s, 600 copies made as
`benchmarks/lfw_scenario.near_duplicate` makes them): registered correlation
>= 0.965 for 99% of copies, while 0.13% of the 6,244 photos reach it with
any of their 8 nearest other photos; without the registration (landmarks
alone) copies reach only 0.82 at their 5th percentile.
"""

from __future__ import annotations

import cv2
import numpy as np

from workbench.faces.align import ARCFACE_TEMPLATE, CROP_SIZE, similarity_transform

SPAN = 224  # template pixels on a side: the 112 px face crop and half of it again all around
SIZE = 32  # thumbnail side: the face's eyes ~5 px apart, below JPEG's and resampling's noise
_WORK = 96  # warped at this size first, then area-averaged down to SIZE
_ITERATIONS = 20  # ECC steps: most copies converge in a few; on celeba10k's reframed copies 10 left
# 1.6% under the threshold and 20 left 1.1%, at 1.27x the cost, other photos' tail unchanged
_SURE = 0.995  # correlated so well without registration that registering cannot change a decision
_SECOND_LOOK = 0.85  # registered one way at least this well: registered the other way too
_FACE_SIDE = SIZE * CROP_SIZE // SPAN  # the aligned crop's square in the middle of the thumbnail
_FACE = slice((SIZE - _FACE_SIDE) // 2, (SIZE + _FACE_SIDE) // 2)
_AROUND_2D = np.ones((SIZE, SIZE), bool)
_AROUND_2D[_FACE, _FACE] = False
AROUND = _AROUND_2D.ravel()  # the thumbnail's pixels around the face: the context proper
# pixels around the face both photos must cover for a correlation to count (an eighth of the
# thumbnail, half the face's square). Without it two faces alone would count: people's faces,
# aligned and blurred to 16 px, correlate as highly as a copy's surroundings (lfw150, whose faces
# fill their photos: 33 people chained into one group at 0.93-0.955), and the embedding and the
# crop's hash already judge the face. An aligned crop has nothing around its face, a face that
# fills its photo little (lfw150's reframed copies: 26 pixels at the median); celeba10k's small
# photos keep 157 or more for 99% of their copies. Where there is enough, the face is compared
# with the rest: left out, one person's photos with similar backgrounds chained instead
MIN_COVERED = SIZE * SIZE // 8
SEARCH_BLUR = 1.0  # thumbnail pixels: search vectors are low-passed so that a copy's jitter of a
# pixel or two, which the registration absorbs, does not push it out of its photo's nearest
_GAP = int(np.ceil(4 * SEARCH_BLUR))  # the blur kernel's radius
THUMBNAIL_BYTES = SIZE * SIZE


def context_thumbnail(gray: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(SIZE*SIZE,) uint8: the photo around the face in the template's frame, 0 where the frame
    reaches outside the photo (photo pixels are stored as 1-255)."""
    dst = (ARCFACE_TEMPLATE + (SPAN - CROP_SIZE) / 2) * (_WORK / SPAN)
    matrix = similarity_transform(landmarks, dst)
    warped = cv2.warpAffine(gray, matrix, (_WORK, _WORK), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    inside = cv2.warpAffine(np.full(gray.shape[:2], 255, np.uint8), matrix, (_WORK, _WORK),
                            flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    # a thumbnail pixel counts where every canvas pixel under it is inside: their mean is 255
    covered = cv2.resize(inside, (SIZE, SIZE), interpolation=cv2.INTER_AREA) == 255
    small = np.maximum(cv2.resize(warped, (SIZE, SIZE), interpolation=cv2.INTER_AREA), 1)
    small[~covered] = 0
    return small.ravel()


def aligned_context(gray_crop: np.ndarray) -> np.ndarray:
    """The thumbnail of a face that is already an aligned crop (its own photo)."""
    scale = gray_crop.shape[0] / CROP_SIZE
    return context_thumbnail(gray_crop, ARCFACE_TEMPLATE * scale)


def around_cover(thumbnails: np.ndarray) -> np.ndarray:
    """Pixels each thumbnail (rows) covers around its face: under `MIN_COVERED`, it can match none."""
    return ((thumbnails > 0) & AROUND).sum(axis=1)


def context_vectors(thumbnails: np.ndarray, block: int = 16384) -> np.ndarray:
    """Unit float16 rows: each thumbnail low-passed over the pixels it covers (a normalised
    Gaussian convolution, `SEARCH_BLUR`), then centred there (zero elsewhere). Their inner
    products are the correlations of the low-passed thumbnails, which find the candidates
    to register: a copy whose landmarks came back a pixel or two off correlates with its photo
    unregistered about as a sharp thumbnail would after registration (celeba10k's reframed
    copies among their photo's 8 nearest at cosine >= 0.6: 98.1% sharp, 99.2% low-passed).
    Made a block at a time: 1M faces take 2 GB as float16, and would take 8 GB more as float32."""
    out = np.empty(thumbnails.shape, np.float16)
    for start in range(0, len(thumbnails), block):
        part = thumbnails[start : start + block]
        covered = part > 0
        x = _low_passed(part.astype(np.float32), covered)
        mean = x.sum(axis=1, keepdims=True) / np.maximum(covered.sum(axis=1, keepdims=True), 1)
        x = np.where(covered, x - mean, 0.0)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + block] = x / np.where(norm > 0, norm, 1.0)
    return out


def _low_passed(rows: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Rows of thumbnails blurred by `SEARCH_BLUR` over their covered pixels only (what lies outside
    the photo does not bleed in), 0 where not covered. One OpenCV blur for a whole block: the
    thumbnails and their cover masks are stacked with zero rows between them that the kernel
    (radius `_GAP`) cannot reach across."""
    n = len(rows)
    stacked = np.zeros((2, n, SIZE + _GAP, SIZE), np.float32)
    stacked[0, :, :SIZE] = rows.reshape(n, SIZE, SIZE)  # 0 where not covered already
    stacked[1, :, :SIZE] = covered.reshape(n, SIZE, SIZE)
    blurred = cv2.GaussianBlur(stacked.reshape(-1, SIZE), (2 * _GAP + 1, 2 * _GAP + 1), SEARCH_BLUR,
                               borderType=cv2.BORDER_CONSTANT).reshape(stacked.shape)[:, :, :SIZE]
    num, den = blurred[0].reshape(n, -1), blurred[1].reshape(n, -1)
    return np.where(covered, num / np.maximum(den, 1e-6), np.float32(0))


def _correlation(a: np.ndarray, b: np.ndarray, covered: np.ndarray) -> float:
    if (covered & _AROUND_2D).sum() < MIN_COVERED:
        return -1.0
    x, y = a[covered] - a[covered].mean(), b[covered] - b[covered].mean()
    denominator = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y) / denominator if denominator > 0 else -1.0


def _filled(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Uncovered pixels set to the covered ones' mean: a hard edge at the photo's border would
    pull the registration towards itself."""
    return np.where(covered, image, image[covered].mean())


def registered_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised correlation of two thumbnails over the pixels both cover, after one is moved onto
    the other by the affine transform that best registers them (the better of before and after);
    -1 where they share fewer than `MIN_COVERED` pixels around the face.

    ECC finds a local optimum from where the landmarks put the two, and which one it moves
    matters (celeba10k's reframed copies: up to 0.04 apart, 0.983 one way and 0.951 the other;
    one at 0.88 and 0.995): a pair that comes out near a decision (from `_SECOND_LOOK`) is
    registered the other way round too, so that the verdict does not depend on which face sorts
    first."""
    first = _registered(a, b)
    return max(first, _registered(b, a)) if _SECOND_LOOK <= first < _SURE else first


def _registered(a: np.ndarray, b: np.ndarray) -> float:
    """`registered_correlation` with `b` moved onto `a`."""
    a2, b2 = (t.reshape(SIZE, SIZE).astype(np.float32) for t in (a, b))
    in_a, in_b = a2 > 0, b2 > 0
    plain = _correlation(a2, b2, in_a & in_b)
    if plain <= -1.0 or plain >= _SURE:
        return plain
    a2, b2 = _filled(a2, in_a), _filled(b2, in_b)
    warp = np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, _ITERATIONS, 1e-3)
    try:
        _, warp = cv2.findTransformECC(a2, b2, warp, cv2.MOTION_AFFINE, criteria,
                                       (in_a & in_b).astype(np.uint8), 1)
    except cv2.error:  # no convergence (flat or unrelated pictures): what the landmarks gave
        return plain
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    moved = cv2.warpAffine(b2, warp, (SIZE, SIZE), flags=flags)
    moved_in = cv2.warpAffine(in_b.astype(np.float32), warp, (SIZE, SIZE), flags=flags) > 0.999
    return max(plain, _correlation(a2, moved, in_a & moved_in))


def mirrored(thumbnails: np.ndarray) -> np.ndarray:
    """Thumbnails (rows) flipped left to right: a mirrored photo's, since the template is symmetric
    to a fraction of a pixel and the registration absorbs the rest."""
    return thumbnails.reshape(-1, SIZE, SIZE)[:, :, ::-1].reshape(len(thumbnails), SIZE * SIZE)


def pair_correlations(thumbnails: np.ndarray, i: np.ndarray, j: np.ndarray,
                      mirror: bool = False) -> np.ndarray:
    """`registered_correlation` of rows i[n] and j[n] (j's mirrored where `mirror`: a flipped
    copy); float32, -1 where they share too little to say (`MIN_COVERED`)."""
    return row_correlations((thumbnails[i], thumbnails[j], mirror))


def row_correlations(job: tuple[np.ndarray, np.ndarray, bool]) -> np.ndarray:
    """`registered_correlation` of each row of `a` with the same row of `b` (b's mirrored where
    `mirror`); one job carries its own thumbnails, so a worker process can take it."""
    a, b, mirror = job
    others = mirrored(b) if mirror else b
    return np.array([registered_correlation(x, y) for x, y in zip(a, others, strict=True)], np.float32)


def best_correlations(thumbnails: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """The higher of the plain and the mirrored `pair_correlations`."""
    return np.maximum(pair_correlations(thumbnails, i, j), pair_correlations(thumbnails, i, j, mirror=True))
