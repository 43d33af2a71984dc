"""Detectors and recognition models: real pretrained files, SCRFD decoding against known outputs,
landmark order against the ArcFace template, one-line errors for bad model files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import shared_model
from workbench.embed.models import ModelSpec, OnnxEmbedder, load_embedder
from workbench.errors import WorkbenchError
from workbench.faces.align import ARCFACE_TEMPLATE, align_face
from workbench.faces.detectors import DetectorSpec, get_detector
from workbench.faces.scrfd import ScrfdDetector, decode
from workbench.faces.yunet import MIN_SIDE, YunetDetector
from workbench.faces.yunet import decode as yunet_decode


def lfw_images(lfw_dir: Path, n: int) -> list[np.ndarray]:
    paths = sorted(lfw_dir.glob("*/*.jpg"))[:: max(1, len(list(lfw_dir.glob("*/*.jpg"))) // n)][:n]
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]


@pytest.mark.parametrize("model", ["yunet_s_640_640.onnx", "yunet_n_640_640.onnx", "scrfd_500m_kps.onnx"])
def test_detectors_find_lfw_faces_with_landmarks_in_template_order(lfw_dir, model):
    kind = "yunet" if model.startswith("yunet") else "scrfd"
    detector = get_detector(DetectorSpec.parse(f"{kind}:{shared_model(model)}"))
    images = lfw_images(lfw_dir, 40)
    found = [detector.detect(im) for im in images]
    assert sum(bool(f) for f in found) >= 39
    for faces in found:
        if not faces:
            continue
        points = faces[0].landmarks
        # The person's right eye is on the image's left, as template point 0.
        assert points[0, 0] < points[1, 0] and points[3, 0] < points[4, 0]
        assert points[0, 1] < points[2, 1] < points[3, 1]
        # The aligned crop puts the landmarks on the template.
        matrix = cv2.estimateAffinePartial2D(points, ARCFACE_TEMPLATE)[0]
        assert matrix is not None
        moved = points @ matrix[:, :2].T + matrix[:, 2]
        assert np.abs(moved - ARCFACE_TEMPLATE).mean() < 4


def test_yunet_and_scrfd_agree_on_landmarks(lfw_dir):
    yunet = get_detector(DetectorSpec.parse(f"yunet:{shared_model('yunet_s_640_640.onnx')}"))
    scrfd = get_detector(DetectorSpec.parse(f"scrfd:{shared_model('scrfd_500m_kps.onnx')}"))
    gaps = [np.abs(y[0].landmarks - s[0].landmarks).mean()
            for im in lfw_images(lfw_dir, 30)
            if (y := yunet.detect(im)) and (s := scrfd.detect(im))]
    assert len(gaps) >= 28 and np.median(gaps) < 4


def test_small_faces_are_found_by_yunet_not_by_plain_dlib():
    folder = shared_model("yunet_s_640_640.onnx").parents[1] / "data" / "celeba10k" / "images"
    if not folder.is_dir():
        pytest.skip(f"small web-like faces not found at {folder}")
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(folder.iterdir())[:30]]
    yunet = get_detector(DetectorSpec.parse(f"yunet:{shared_model('yunet_s_640_640.onnx')}"))
    dlib = get_detector(DetectorSpec.parse("dlib"))
    assert sum(bool(yunet.detect(im)) for im in images) >= 29
    assert sum(bool(dlib.detect(im)) for im in images) <= 10


def opencv_yunet(path: Path, rgb: np.ndarray) -> np.ndarray:
    """OpenCV's own YuNet (`cv2.FaceDetectorYN`) on the image as the workbench scales it: rows of
    box x, y, w, h, 10 landmark coordinates and score, in the image's pixels."""
    height, width = rgb.shape[:2]
    scale = max(1.0, MIN_SIDE / max(height, width))
    bgr = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (round(width * scale), round(height * scale)),
                     interpolation=cv2.INTER_CUBIC) if scale != 1.0 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    net = cv2.FaceDetectorYN.create(str(path), "", (bgr.shape[1], bgr.shape[0]), 0.7, 0.3, 5000)
    faces = net.detect(bgr)[1]
    return np.zeros((0, 15)) if faces is None else faces / np.r_[np.full(14, scale), 1.0]


@pytest.mark.parametrize("model", ["yunet_s_640_640.onnx", "yunet_n_640_640.onnx"])
def test_yunet_finds_what_opencvs_yunet_finds(lfw_dir, model):
    """The workbench runs YuNet through onnxruntime (faster); OpenCV's implementation is the
    reference: the same faces, boxes, landmarks and scores, on large and on small photos."""
    path = shared_model(model)
    detector = YunetDetector(str(path))
    small = sorted((path.parents[1] / "data" / "celeba10k" / "images").glob("*.jpg"))[:20]
    images = lfw_images(lfw_dir, 20) + [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in small]
    compared = 0
    for rgb in images:
        ours = sorted(detector.detect(rgb), key=lambda d: -d.score)
        theirs = opencv_yunet(path, rgb)
        theirs = theirs[np.argsort(-theirs[:, 14], kind="stable")]
        assert len(ours) == len(theirs)
        for face, row in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(face.bbox, [*row[:2], *(row[:2] + row[2:4])], atol=0.01)
            np.testing.assert_allclose(face.landmarks, row[4:14].reshape(5, 2), atol=0.01)
            assert face.score == pytest.approx(row[14], abs=1e-4)
            compared += 1
    assert compared >= 38


def test_yunet_decoding_by_hand():
    """One cell above the threshold, at stride 16 of a 64x96 (h x w) input: cell (c=2, r=1)."""
    rows = {8: 8 * 12, 16: 4 * 6, 32: 2 * 3}
    outputs = {}
    for stride, n in rows.items():
        outputs[f"cls_{stride}"] = np.full((1, n, 1), 0.2, np.float32)
        outputs[f"obj_{stride}"] = np.full((1, n, 1), 1.5, np.float32)  # clipped to 1
        outputs[f"bbox_{stride}"] = np.zeros((1, n, 4), np.float32)
        outputs[f"kps_{stride}"] = np.zeros((1, n, 10), np.float32)
    cell = 1 * 6 + 2  # row-major over 6 columns
    outputs["cls_16"][0, cell] = 0.81
    outputs["bbox_16"][0, cell] = [0.5, 0.25, np.log(2.0), np.log(3.0)]
    outputs["kps_16"][0, cell] = [0, 0, 1, 0, 0.5, 0.5, 0, 1, 1, 1]
    scores, boxes, kps = yunet_decode(outputs, (64, 96), threshold=0.7)
    assert scores == pytest.approx([0.9])  # sqrt(0.81 * 1)
    cx, cy, w, h = (2 + 0.5) * 16, (1 + 0.25) * 16, 2 * 16, 3 * 16
    np.testing.assert_allclose(boxes[0], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], rtol=1e-6)
    np.testing.assert_allclose(kps[0], [[32, 16], [48, 16], [40, 24], [32, 32], [48, 32]], rtol=1e-6)
    with pytest.raises(WorkbenchError, match="not a YuNet model"):
        yunet_decode({"cls_8": outputs["cls_8"]}, (64, 96), 0.7)
    with pytest.raises(WorkbenchError, match="do not match a 64x64 input"):
        yunet_decode(outputs, (64, 64), 0.7)


class KnownOutputs(torch.nn.Module):
    """A stand-in SCRFD for a 64x64 input: every anchor scores 0.1 except one at stride 16."""

    def __init__(self) -> None:
        super().__init__()
        self.outs = torch.nn.ParameterList()
        for stride in (8, 16, 32):
            n = (64 // stride) ** 2 * 2
            scores = torch.full((1, n, 1), 0.1)
            boxes = torch.ones((1, n, 4))
            kps = torch.zeros((1, n, 10))
            if stride == 16:
                # cell (x=2, y=1), second anchor: row (1 * 4 + 2) * 2 + 1 = 13
                scores[0, 13, 0] = 0.9
                boxes[0, 13] = torch.tensor([1.0, 0.5, 2.0, 1.5])
                kps[0, 13] = torch.tensor([-0.5, 0.0, 0.5, 0.0, 0.0, 0.5, -0.5, 1.0, 0.5, 1.0])
            self.outs.extend([torch.nn.Parameter(t, requires_grad=False) for t in (scores, boxes, kps)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        zero = x.mean() * 0
        order = [0, 3, 6, 1, 4, 7, 2, 5, 8]  # scores, boxes, keypoints per stride
        return tuple(self.outs[i] + zero for i in order)


def test_scrfd_decoding_of_a_tiny_exported_model(tmp_path):
    path = tmp_path / "tiny_scrfd.onnx"
    torch.onnx.export(KnownOutputs(), (torch.zeros(1, 3, 64, 64),), str(path), opset_version=17,
                      input_names=["images"], dynamo=False)
    detector = ScrfdDetector(str(path), threshold=0.5)
    assert detector.input_hw == (64, 64)
    # The image is twice the input: letterboxed at scale 0.5, so coordinates double back.
    faces = detector.detect(np.zeros((128, 128, 3), np.uint8))
    assert len(faces) == 1
    cx, cy = 2 * 16, 1 * 16  # the cell's corner, in input pixels
    box = np.array([cx - 16, cy - 8, cx + 32, cy + 24]) * 2.0
    np.testing.assert_allclose(faces[0].bbox, box, atol=1e-4)
    kps = np.array([[cx - 8, cy], [cx + 8, cy], [cx, cy + 8], [cx - 8, cy + 16], [cx + 8, cy + 16]]) * 2.0
    np.testing.assert_allclose(faces[0].landmarks, kps, atol=1e-4)
    assert faces[0].score == pytest.approx(0.9)


def test_decode_refuses_outputs_that_are_not_scrfd():
    with pytest.raises(WorkbenchError, match="not an SCRFD model"):
        decode([np.zeros((1, 10, 3))], (64, 64), 0.5)


def test_bad_model_files_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model")
    for make in (lambda: OnnxEmbedder(str(junk)), lambda: ScrfdDetector(str(junk)),
                 lambda: get_detector(DetectorSpec("yunet", str(junk)))):
        with pytest.raises(WorkbenchError) as info:
            make()
        assert "\n" not in str(info.value) and str(junk) in str(info.value)
    detector_file = shared_model("scrfd_500m_kps.onnx")
    with pytest.raises(WorkbenchError, match="needs one Nx3x112x112 input, not 1x3x640x640"):
        OnnxEmbedder(str(detector_file))
    with pytest.raises(WorkbenchError, match="not a YuNet model"):
        get_detector(DetectorSpec("yunet", str(detector_file))).detect(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(WorkbenchError, match="unknown detector"):
        DetectorSpec.parse("retinaface")
    with pytest.raises(WorkbenchError, match="file not found"):
        DetectorSpec.parse(f"scrfd:{tmp_path / 'missing.onnx'}")
    with pytest.raises(WorkbenchError, match="--upsample is for dlib"):
        DetectorSpec.parse(f"scrfd:{detector_file}", upsample=1)
    with pytest.raises(WorkbenchError, match="--model-norm takes MEAN,STD"):
        ModelSpec.parse(f"onnx:{detector_file}", norm="127.5")


def test_yunet_without_a_path_is_the_shipped_file_and_the_variable_overrides_it(monkeypatch):
    monkeypatch.delenv("WB_YUNET_MODEL", raising=False)
    shipped = DetectorSpec.parse("yunet")
    assert shipped.path.endswith("workbench/faces/models/yunet_s_640_640.onnx")
    path = shared_model("yunet_s_640_640.onnx")
    assert shipped.key == DetectorSpec.parse(f"yunet:{path}").key  # the same weights
    monkeypatch.setenv("WB_YUNET_MODEL", str(path))
    assert DetectorSpec.parse("yunet").path == str(path.resolve())


def test_insightface_pack_picks_its_detector_and_recogniser(tmp_path):
    pack = tmp_path / "buffalo_test"
    pack.mkdir()
    (pack / "det_500m.onnx").symlink_to(shared_model("scrfd_500m_kps.onnx"))
    (pack / "w600k_mbf.onnx").symlink_to(shared_model("mobilefacenet_128d.onnx"))
    assert DetectorSpec.parse(f"insightface:{pack}").kind == "scrfd"
    spec = ModelSpec.parse(f"insightface:{pack}")
    assert spec.kind == "onnx" and Path(spec.path).name == "w600k_mbf.onnx"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WorkbenchError, match="no det_"):
        DetectorSpec.parse(f"insightface:{empty}")


def test_mobilefacenet_tells_people_apart_and_norm_changes_the_key(lfw_dir):
    spec = ModelSpec.parse(f"onnx:{shared_model('mobilefacenet_128d.onnx')}")
    detector = get_detector(DetectorSpec.parse(f"yunet:{shared_model('yunet_s_640_640.onnx')}"))
    people = [p for p in sorted(lfw_dir.iterdir()) if len(list(p.iterdir())) >= 2][:20]
    crops, labels = [], []
    for label, person in enumerate(people):
        for path in sorted(person.iterdir())[:2]:
            rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            crops.append(align_face(rgb, detector.detect(rgb)[0].landmarks))
            labels.append(label)
    vectors = load_embedder(spec).embed(np.stack(crops))
    assert vectors.shape == (40, 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    sims = vectors @ vectors.T
    same = np.array(labels)[:, None] == np.array(labels)[None, :]
    np.fill_diagonal(same, False)
    different = np.array(labels)[:, None] != np.array(labels)[None, :]
    assert np.median(sims[same]) > 0.5 > np.percentile(sims[different], 99)
    other = ModelSpec.parse(spec.kind + ":" + spec.path, norm="127,128")
    assert other.key != spec.key and other.key.endswith("+norm127,128")


class TinyRecogniser(torch.nn.Module):
    """A stand-in recogniser: optionally normalises its input itself, as MXNet exports do."""

    def __init__(self, normalise_inside: bool) -> None:
        super().__init__()
        self.normalise_inside = normalise_inside
        self.conv = torch.nn.Conv2d(3, 4, 8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalise_inside:
            x = (x - 127.5) * 0.0078125
        return self.conv(x).flatten(1)


def export_tiny(path: Path, normalise_inside: bool, batch: int | None) -> Path:
    torch.manual_seed(0)
    dynamic = None if batch else {"input": {0: "batch"}}
    torch.onnx.export(TinyRecogniser(normalise_inside), (torch.zeros(batch or 2, 3, 112, 112),), str(path),
                      opset_version=17, input_names=["input"], dynamic_axes=dynamic, dynamo=False)
    return path


def test_fixed_batch_models_and_input_scaling(tmp_path):
    import onnx

    crops = np.random.default_rng(0).integers(0, 255, size=(3, 112, 112, 3), dtype=np.uint8)
    fixed = OnnxEmbedder(str(export_tiny(tmp_path / "fixed.onnx", False, batch=1)))
    dynamic = OnnxEmbedder(str(export_tiny(tmp_path / "dynamic.onnx", False, batch=None)))
    assert (fixed.mean, fixed.std) == (127.5, 127.5) and fixed.dim == 4 * 14 * 14
    np.testing.assert_allclose(fixed.embed(crops), dynamic.embed(crops), atol=1e-5)
    # A graph that starts by normalising itself is fed raw pixels.
    inside = OnnxEmbedder(str(export_tiny(tmp_path / "inside.onnx", True, batch=None)))
    assert (inside.mean, inside.std) == (0.0, 1.0)
    # Metadata wins over the graph; --model-norm wins over both.
    model = onnx.load(str(tmp_path / "inside.onnx"))
    onnx.helper.set_model_props(model, {"input_mean": "127", "input_std": "128"})
    onnx.save(model, str(tmp_path / "meta.onnx"))
    assert (OnnxEmbedder(str(tmp_path / "meta.onnx")).mean, OnnxEmbedder(str(tmp_path / "meta.onnx")).std) \
        == (127.0, 128.0)
    assert OnnxEmbedder(str(tmp_path / "meta.onnx"), norm=(0.0, 255.0)).std == 255.0
