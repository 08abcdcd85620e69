"""Face analysis, face-locator / region masks and identity embedding on real images.

Model files come from tests/face_models.py (the exact files of the first-use download, from a
PyPI wheel); downloads go to a 127.0.0.1 server only."""
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data
from skimage.transform import rescale

from emo_core import hub
from emo_core.preprocess import masks as M
from emo_core.preprocess.face import (DETECTOR_FILE, MIRROR_ENV, Face, FaceAnalyzer, NoFaceError, default_models_dir,
                                      has_solutions)
from emo_core.preprocess.identity import ARCFACE_TEMPLATE, FaceEmbedder, align_face, umeyama_similarity, warp_affine
from face_models import LANDMARKER, face_mirror, face_model_files  # noqa: F401 (fixtures)

mediapipe = pytest.importorskip("mediapipe", reason="mediapipe is not installed (pip install -r requirements.txt)")
needs_solutions = pytest.mark.skipif(not has_solutions(), reason="installed mediapipe has no mediapipe.solutions")


@pytest.fixture(scope="module")
def astronaut():
    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="module")
def analyzer(face_model_files):
    with FaceAnalyzer(backend="tasks", models_dir=face_model_files, download=False) as fa:
        yield fa


@pytest.fixture(scope="module")
def astro_face(analyzer, astronaut):
    return analyzer.analyze(astronaut)


def test_astronaut_face_and_landmarks(astro_face, astronaut):
    f = astro_face
    assert f is not None and f.score > 0.7
    x0, y0, x1, y1 = f.box_xyxy
    # the face is in the upper middle of the 512x512 portrait
    assert 120 < x0 < x1 < 330 and 30 < y0 < y1 < 230 and 60 < x1 - x0 < 160
    if f.landmarks is not None:
        lm = f.landmarks
        assert lm.shape in ((478, 3), (468, 3))
        assert np.all(lm[:, 0] > x0 - 30) and np.all(lm[:, 0] < x1 + 30)
        pts = f.five_points()
        assert pts[0, 0] < pts[1, 0] and pts[3, 0] < pts[4, 0]  # image-left eye / mouth corner first
        assert pts[0, 1] < pts[2, 1] < pts[3, 1]  # eyes above nose above mouth


@needs_solutions
def test_solutions_backend_forced(astronaut):
    with FaceAnalyzer(backend="solutions") as fa:
        f = fa.analyze(astronaut)
    assert fa.backend == "solutions" and f.landmarks.shape == (478, 3)


@pytest.fixture()
def no_default_files(tmp_path, monkeypatch):
    """An empty default models folder (./install.sh fills the real one)."""
    monkeypatch.setenv("EMO_MODELS_DIR", str(tmp_path / "default_models"))


def test_first_use_download_goes_to_models_dir_with_progress(face_mirror, no_default_files, tmp_path, astronaut):
    """The real download code against a loopback mirror: one file (the landmarker bundle, whose
    detector member is used), sha256-checked, renamed into place, progress reported."""
    seen = []
    models = tmp_path / "models" / "emo" / "face_analysis"
    with FaceAnalyzer(backend="tasks", models_dir=models, progress_callback=lambda *a: seen.append(a)) as fa:
        f = fa.analyze(astronaut)
    assert face_mirror.requests == [f"/{LANDMARKER}"]
    assert sorted(p.name for p in models.iterdir()) == [LANDMARKER]  # no temporary file left
    assert hub.sha256_of(models / LANDMARKER) == hub.KNOWN_FILES[LANDMARKER].sha256
    total = (models / LANDMARKER).stat().st_size
    assert seen[0] == (LANDMARKER, 0, total) and seen[-1] == (LANDMARKER, total, total)
    assert f.landmarks.shape == (478, 3) and f.transformation_matrix.shape == (4, 4)
    assert f.keypoints.shape == (6, 2) and f.score > 0.7
    with FaceAnalyzer(backend="tasks", models_dir=models) as fa:  # second use: nothing downloaded
        fa.analyze(astronaut)
    assert len(face_mirror.requests) == 1


def test_detector_only_fetches_only_the_detector(face_mirror, no_default_files, tmp_path, astronaut):
    models = tmp_path / "m"
    with FaceAnalyzer(backend="tasks", models_dir=models, landmarks=False) as fa:
        f = fa.analyze(astronaut)
    assert face_mirror.requests == [f"/{DETECTOR_FILE}"] and (models / DETECTOR_FILE).is_file()
    assert f.landmarks is None and f.keypoints.shape == (6, 2)
    pts = f.five_points()  # from the detector's keypoints
    assert pts[0, 0] < pts[1, 0] and pts[0, 1] < pts[3, 1]


def test_search_dirs_are_read_and_never_written(face_mirror, face_model_files, no_default_files, tmp_path, astronaut):
    """Hallo's download layout already holds the landmarker under its own name."""
    hallo = tmp_path / "hallo" / "face_analysis" / "models"
    hallo.mkdir(parents=True)
    (hallo / "face_landmarker_v2_with_blendshapes.task").write_bytes((face_model_files / LANDMARKER).read_bytes())
    models = tmp_path / "models"
    with FaceAnalyzer(models_dir=models, search_dirs=[None, hallo]) as fa:
        assert fa.backend == "tasks"
        assert fa.analyze(astronaut).landmarks.shape == (478, 3)
    assert face_mirror.requests == [] and not models.exists()


def test_offline_error_names_file_destination_and_url(no_default_files, tmp_path, monkeypatch, astronaut):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{port}/mirror/")
    models = tmp_path / "models"
    with pytest.raises(hub.ModelFileMissing) as err:
        FaceAnalyzer(backend="tasks", models_dir=models).analyze(astronaut)
    msg = str(err.value)
    assert str(models / LANDMARKER) in msg and f"http://127.0.0.1:{port}/mirror/{LANDMARKER}" in msg
    assert list(models.iterdir()) == []  # no half-written file
    monkeypatch.delenv(MIRROR_ENV)
    with pytest.raises(hub.ModelFileMissing, match="switched off") as err:
        FaceAnalyzer(backend="tasks", models_dir=models, download=False).analyze(astronaut)
    assert "storage.googleapis.com" in str(err.value) and str(models / LANDMARKER) in str(err.value)


def test_default_models_dir_is_the_documented_one(monkeypatch, tmp_path, face_model_files, astronaut):
    monkeypatch.setenv("EMO_MODELS_DIR", str(tmp_path))
    assert default_models_dir() == tmp_path / "emo" / "face_analysis"
    # files there serve any other models_dir too (read only)
    default_models_dir().mkdir(parents=True)
    (default_models_dir() / LANDMARKER).write_bytes((face_model_files / LANDMARKER).read_bytes())
    with FaceAnalyzer(models_dir=tmp_path / "elsewhere", download=False) as fa:
        assert fa.backend == "tasks" and fa.analyze(astronaut).landmarks is not None
    assert not (tmp_path / "elsewhere").exists()
    monkeypatch.delenv("EMO_MODELS_DIR")
    assert default_models_dir() == Path.home() / ".cache" / "emo_portrait" / "models" / "emo" / "face_analysis"


def test_face_in_a_wide_frame(analyzer, astronaut):
    """The short-range detector sees a letterboxed copy; square tiles find a face at the edge."""
    small = (rescale(astronaut, 0.5, channel_axis=2) * 255).astype(np.uint8)
    wide = np.full((256, 768, 3), 100, np.uint8)
    wide[:, 512:] = small
    f = analyzer.analyze(wide)
    assert f is not None and f.landmarks is not None
    x0, y0, x1, y1 = f.box_xyxy
    assert 560 < x0 < x1 < 680 and 10 < y0 < y1 < 120


def test_bad_backend_name():
    with pytest.raises(ValueError, match="backend"):
        FaceAnalyzer(backend="dlib")


@pytest.mark.parametrize("name", ["blank", "rocket", "coffee"])
def test_no_face(analyzer, name):
    img = np.full((256, 256, 3), 128, np.uint8) if name == "blank" else getattr(data, name)()
    assert analyzer.analyze(img) is None
    with pytest.raises(NoFaceError, match="no face"):
        analyzer.analyze(img, if_missing="error")
    with pytest.warns(UserWarning, match="whole frame"):
        f = analyzer.analyze(img, if_missing="full_frame")
    h, w = img.shape[:2]
    mask = M.face_box_mask(f, h, w)
    assert mask.shape == (h, w) and mask.min() == 1.0
    with pytest.raises(NoFaceError):
        M.union_mask([None, None], h, w)
    with pytest.warns(UserWarning, match="full-frame"):
        assert M.union_mask([None], h, w, if_missing="full_frame").min() == 1


def test_several_faces_pick_largest(analyzer, astronaut):
    head = astronaut[30:290, 100:360]
    small = (rescale(head, 0.7, channel_axis=2) * 255).astype(np.uint8)
    two = np.full((384, 384, 3), 90, np.uint8)
    two[:260, :260] = head
    two[200:200 + small.shape[0], 384 - small.shape[1]:] = small
    with pytest.warns(UserWarning, match="2 faces found; using the largest"):
        f = analyzer.analyze(two)
    assert f.box_xyxy[2] < 200  # the full-size face on the left


def test_masks_on_astronaut(astro_face):
    f = astro_face
    H = W = 512
    m = M.face_box_mask(f, H, W, expand_ratio=1.2)
    assert m.shape == (H, W) and set(torch.unique(m).tolist()) == {0.0, 1.0}
    area = (f.box_xyxy[2] - f.box_xyxy[0]) * (f.box_xyxy[3] - f.box_xyxy[1])
    assert 1.3 * area < m.sum() < 1.6 * area
    lat = M.latent_mask(m, 8)
    assert lat.shape == (64, 64) and lat.sum() * 64 >= m.sum()
    shifted = Face(f.box_xyxy + np.array([40, 0, 40, 0], np.float32), f.score)
    u = M.union_mask([f, None, shifted], H, W, 1.2)
    assert u.sum() > m.sum() and torch.all(u >= m)
    cm = M.clip_masks([f, shifted, f, f], H, W, clip_len=2)
    assert cm.shape == (4, H, W) and torch.equal(cm[0], cm[1]) and torch.equal(cm[2], m)

    r = M.hallo_region_masks(f, H, W)
    for k in ("full", "face", "lip", "face_locator", "lip_box"):
        assert r[k].shape == (H, W) and r[k].min() >= 0 and r[k].max() <= 1
    # lip box inside the face box; the blurred lip mass sits inside the face box
    assert torch.all(r["face_locator"][r["lip_box"] > 0] == 1)
    ys, xs = torch.nonzero(r["lip"] > 0.9, as_tuple=True)
    fy, fx = torch.nonzero(r["face_locator"], as_tuple=True)
    assert fy.min() <= ys.min() and ys.max() <= fy.max() + 16 and fx.min() <= xs.min() and xs.max() <= fx.max()
    assert r["full"][0, 0] > 0.9 and r["full"][int(ys.float().mean()), int(xs.float().mean())] < 0.2
    lv = M.region_masks_per_level(r, H)
    assert [t.shape for t in lv["lip"]] == [(1, 64 * 64), (1, 32 * 32), (1, 16 * 16), (1, 8 * 8)]
    with pytest.raises(ValueError, match="square"):
        M.region_masks_per_level({k: v[:, :256] for k, v in r.items()}, H)


def test_masks_without_landmarks_warn():
    f = Face(np.array([100, 100, 200, 220], np.float32), 0.9)
    with pytest.warns(UserWarning, match="no landmarks"):
        r = M.hallo_region_masks(f, 256, 256)
    assert r["lip"].shape == (256, 256)


# ----------------------------------------------------------------------------- identity
def test_umeyama_recovers_similarity():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    ang, s, t = np.deg2rad(17), 1.7, np.array([3.0, -8.0])
    R = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    dst = (s * R @ src.T).T + t
    np.testing.assert_allclose(umeyama_similarity(src, dst), np.c_[s * R, t], atol=1e-9)


def test_alignment_puts_points_on_template(astronaut, astro_face):
    pts = astro_face.five_points()
    crop = align_face(astronaut, pts)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.float32
    m = umeyama_similarity(pts, ARCFACE_TEMPLATE)
    mapped = (m[:, :2] @ pts.T).T + m[:, 2]
    assert np.abs(mapped - ARCFACE_TEMPLATE).max() < 10.0  # real faces differ from the template by a few px
    # the warp is a plain affine resampling: identity matrix copies pixels
    ident = warp_affine(astronaut, np.array([[1.0, 0, 0], [0, 1.0, 0]]), 64)
    np.testing.assert_allclose(ident, astronaut[:64, :64].astype(np.float32))


def test_embedder_with_tiny_onnx(tmp_path, astronaut, astro_face):
    pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8, stride=8), torch.nn.Flatten(), torch.nn.Linear(4 * 14 * 14, 512)).eval()
    path = tmp_path / "glintr100.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 112, 112),), str(path), dynamo=False,
                          input_names=["input.1"], output_names=["embedding"])
    emb = FaceEmbedder(tmp_path)
    assert emb.available
    e = emb.embed(astronaut, astro_face)
    assert e.shape == (512,) and e.dtype == np.float32
    crop = align_face(astronaut, astro_face.five_points())
    x = torch.from_numpy((crop - 127.5) / 127.5).permute(2, 0, 1)[None].float()
    np.testing.assert_allclose(e, net(x).detach().numpy()[0], atol=1e-4, rtol=1e-4)
    en = FaceEmbedder(tmp_path, normalize=True).embed(astronaut, astro_face)
    assert abs(np.linalg.norm(en) - 1) < 1e-5


def test_embedder_without_model_warns_and_gives_zeros(tmp_path, astronaut, astro_face):
    emb = FaceEmbedder(tmp_path)
    with pytest.warns(UserWarning, match="glintr100.onnx"):
        e = emb.embed(astronaut, astro_face)
    assert e.shape == (512,) and not e.any()
    assert not FaceEmbedder(None).available


def test_inside_comfyui_the_default_is_its_models_folder(monkeypatch, tmp_path):
    import sys
    from types import SimpleNamespace

    monkeypatch.setitem(sys.modules, "folder_paths", SimpleNamespace(models_dir=str(tmp_path / "ComfyUI" / "models")))
    assert default_models_dir() == tmp_path / "ComfyUI" / "models" / "emo" / "face_analysis"
