"""Face-aware framing and paste-back on real photos: an off-centre face in a wide photo, a cat
(no human face), an upside-down portrait; exact paste-back outside the feathered band."""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from emo_core.preprocess.face import Face, NoFaceError
from emo_core.preprocess.framing import (Framing, NoCredibleFaceError, PasteBack, choose_face, crop_portrait,
                                         find_face, frame_portrait, framing_for_face, paste_back)

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO / "samples" / "speech.wav"
# the astronaut's face box in skimage's 512x512 photo (see test_preprocess_face.py)
ASTRO_FACE = (178, 83, 273, 178)


@pytest.fixture(scope="module")
def analyzer():
    pytest.importorskip("mediapipe", reason="mediapipe is not installed (CI installs 0.10.21 --no-deps)")
    from emo_core.preprocess.face import FaceAnalyzer

    with FaceAnalyzer(backend="auto") as fa:
        yield fa


@pytest.fixture(scope="module")
def wide_photo():
    """640x360: the astronaut (280 px) at the right edge, face on the centre square's border;
    returns (photo, where the face really is)."""
    side, x0, y0 = 280, 360, 40
    photo = np.full((360, 640, 3), (70, 90, 110), np.uint8)
    astronaut = Image.fromarray(data.astronaut()).resize((side, side), Image.BICUBIC)
    photo[y0:y0 + side, x0:x0 + side] = np.asarray(astronaut)
    s = side / 512
    face = tuple(v * s + o for v, o in zip(ASTRO_FACE, (x0, y0, x0, y0)))
    return photo, face


def centre(box):
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def inside(point, box, slack=0.0):
    return box[0] - slack <= point[0] <= box[2] + slack and box[1] - slack <= point[1] <= box[3] + slack


# ---------------------------------------------------------------------------- finding and framing
def test_off_centre_face_in_a_wide_photo_is_framed_where_it_is(analyzer, wide_photo):
    photo, truth = wide_photo
    assert truth[0] < 500 < truth[2]  # the old centre square (x 140..500) cuts this face in half
    framed = frame_portrait(photo, 64, analyzer=analyzer)
    f = framed.framing
    assert f.mode == "face" and f.score >= 0.6 and f.image_size == (360, 640) and f.size == (64, 64)
    assert inside(centre(f.face_box), truth, slack=5) and inside(centre(truth), f.face_box)
    x0, y0, x1, y1 = f.box
    assert x1 - x0 == y1 - y0 == round(max(f.face_box[2] - f.face_box[0], f.face_box[3] - f.face_box[1]) * 2)
    assert x0 <= f.face_box[0] and x1 >= f.face_box[2] and y0 <= f.face_box[1] and y1 >= f.face_box[3]
    assert not f.padded  # the square fits: it stays inside the photo
    assert framed.portrait.shape == (64, 64, 3) and framed.portrait.dtype == torch.float32
    fc = centre(framed.face.box_xyxy)  # the face, in the portrait's pixels, sits in its middle
    assert abs(fc[0] - 32) < 6 and abs(fc[1] - 32) < 6 and framed.face.landmarks.shape[0] >= 468
    assert "face score" in f.describe() and "640x360" in f.describe()


def test_a_bigger_margin_gives_a_bigger_square(analyzer, wide_photo):
    small = frame_portrait(wide_photo[0], 64, analyzer=analyzer, margin=0.25).framing
    big = frame_portrait(wide_photo[0], 64, analyzer=analyzer, margin=1.0).framing
    assert big.width > small.width * 1.5 and small.face_box == big.face_box


def test_a_cat_is_refused_and_the_full_frame_fallback_works(analyzer):
    cat = np.ascontiguousarray(data.chelsea())
    with pytest.raises(NoCredibleFaceError, match="full-frame fallback") as err:
        frame_portrait(cat, 64, analyzer=analyzer)
    assert isinstance(err.value, NoFaceError) and "451x300" in str(err.value)
    # the centre square of the cat is what the detector used to call a face (score ~0.53, no landmarks)
    square = np.ascontiguousarray(cat[:, 75:375])
    with pytest.raises(NoCredibleFaceError) as err:
        find_face(square, analyzer)
    assert "refused" in str(err.value) or "no face found" in str(err.value)
    with pytest.warns(UserWarning, match="centre of the photo"):
        framed = frame_portrait(cat, 64, analyzer=analyzer, if_no_face="full_frame")
    assert framed.framing.mode == "full_frame" and framed.framing.box == (75, 0, 375, 300)
    assert framed.face.score == 0 and tuple(framed.face.box_xyxy) == (0, 0, 64, 64)
    assert paste_back(framed.portrait[None], cat, framed.framing).shape == (1, 300, 451, 3)


@pytest.mark.parametrize("turn", ["flip", "rot180"])
def test_an_upside_down_portrait_never_frames_the_background(analyzer, turn):
    astro = data.astronaut()
    photo = np.ascontiguousarray(astro[::-1] if turn == "flip" else np.rot90(astro, 2))
    x0, y0, x1, y1 = ASTRO_FACE
    truth = (x0, 512 - y1, x1, 512 - y0) if turn == "flip" else (512 - x1, 512 - y1, 512 - x0, 512 - y0)
    try:
        framed = frame_portrait(photo, 64, analyzer=analyzer)
    except NoCredibleFaceError as exc:
        assert "upside down" in str(exc)  # the message says how to fix the photo
        return
    assert inside(centre(framed.framing.face_box), truth, slack=10)


def test_the_face_is_chosen_by_confidence_not_by_area(analyzer):
    real = analyzer.detect_all(data.astronaut(), landmarks_for="all")[0]
    big_unsure = Face(real.box_xyxy * 2, 0.55, landmarks=real.landmarks * 2, keypoints=real.keypoints * 2)
    big_no_mesh = Face(real.box_xyxy * 2, 0.99, keypoints=real.keypoints * 2)
    best, others = choose_face([big_unsure, big_no_mesh, real])
    assert best is real
    reasons = dict((id(f), r) for f, r in others)
    assert "below the minimum" in reasons[id(big_unsure)] and "landmarks" in reasons[id(big_no_mesh)]
    # keypoints alone are enough when the analyzer computes no landmarks; sideways is still refused
    best, _ = choose_face([big_no_mesh], require_landmarks=False)
    assert best is big_no_mesh
    turned = Face(real.box_xyxy, 0.9, keypoints=real.keypoints[:, ::-1].copy())
    assert choose_face([turned], require_landmarks=False)[0] is None


def test_center_and_none_modes(analyzer):
    framed = frame_portrait(data.astronaut(), 64, mode="center", analyzer=analyzer)
    assert framed.framing.box == (0, 0, 512, 512) and framed.framing.mode == "center"
    fx, fy = centre(framed.face.box_xyxy)  # found on the centre square, in the portrait's pixels
    tx, ty = centre(ASTRO_FACE)
    assert abs(fx - tx / 8) < 2 and abs(fy - ty / 8) < 2
    wide = np.zeros((100, 300, 3), np.uint8)
    whole = frame_portrait(wide, 128, mode="none", detect=False)
    assert whole.framing.size == (64, 128) and whole.portrait.shape == (64, 128, 3) and whole.face is None
    assert paste_back(whole.portrait[None], wide, whole.framing).shape == (1, 100, 300, 3)


# ---------------------------------------------------------------------------- crop and paste-back
def photo_and_framing(box, size=48, hw=(90, 160), pad_mode="edge"):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    return photo, framing_for_face(box, hw, size, margin=0.5, pad_mode=pad_mode)


def test_the_square_moves_inside_the_photo_and_pads_only_where_it_cannot_fit():
    photo, f = photo_and_framing((140, 10, 156, 26))  # near the right edge: moved inside
    assert f.box == (128, 2, 160, 34) and not f.padded
    photo, f = photo_and_framing((40, 20, 110, 90), size=140)  # 140 px square in a 90 px tall photo
    assert f.box[3] - f.box[1] == 140 and f.box[1] < 0 and f.box[3] > 90 and f.padded
    crop = crop_portrait(photo, f)  # size == side: no resampling, the padding is visible as it is
    x0, y0 = f.box[:2]
    inner = torch.from_numpy(photo[:, x0:x0 + 140].astype(np.float32) / 255)
    assert torch.equal(crop[-y0:-y0 + 90], inner)
    assert torch.equal(crop[0], inner[0]) and torch.equal(crop[-1], inner[-1])  # edge rows repeated
    photo, f = photo_and_framing((40, 20, 110, 90), size=140, pad_mode="reflect")
    crop = crop_portrait(photo, f)
    assert torch.equal(crop[-y0 - 1], torch.from_numpy(photo[1, x0:x0 + 140].astype(np.float32) / 255))


@pytest.mark.parametrize("dtype", ["uint8", "float"])
def test_paste_back_is_exact_outside_the_feather_and_blends_inside(dtype):
    photo, f = photo_and_framing((60, 30, 90, 60))  # 60 px square (30..90 x 15..75), inside the photo
    assert f.box == (45, 15, 105, 75)
    image = photo if dtype == "uint8" else torch.from_numpy(photo.astype(np.float32) / 255)
    frames = torch.full((5, 48, 48, 3), 0.25)
    frames[2] = 1.0
    out = paste_back(frames, image, f, feather=0.1, chunk=2)
    assert out.shape == (5, 90, 160, 3) and out.dtype == (torch.uint8 if dtype == "uint8" else torch.float32)
    ref = torch.as_tensor(image)
    outside = torch.ones(90, 160, dtype=torch.bool)
    outside[15:75, 45:105] = False
    assert torch.equal(out[:, outside], ref[outside].expand(5, -1, -1))  # the photo exactly
    scale = 255.0 if dtype == "uint8" else 1.0
    for t, value in ((0, 0.25), (2, 1.0)):  # 6 px (0.1 x 60) inside every edge: the generated frame exactly
        core = out[t, 21:69, 51:99].float()
        want = torch.full_like(core, round(value * 255) if dtype == "uint8" else value)
        assert torch.allclose(core, want, atol=1e-6, rtol=0)
    band = out[0, 45, 45:51].float()  # left edge of the square, mid-height: photo -> generated
    w = PasteBack(image, f).alpha[30, :6, 0]
    assert torch.all(w[1:] > w[:-1]) and 0 < w[0] < 0.1 and 0.9 < w[-1] < 1
    want = ref[45, 45:51].float() + w[:, None] * (0.25 * scale - ref[45, 45:51].float())
    assert torch.allclose(band, want, atol=0.51 if dtype == "uint8" else 1e-6)


def test_paste_back_edges_on_the_photo_border_are_not_feathered():
    photo, f = photo_and_framing((0, 0, 20, 20))  # top-left corner: the square is moved onto two borders
    assert f.box[0] == 0 and f.box[1] == 0
    out = paste_back(torch.ones(1, 48, 48, 3), photo, f, feather=0.2)
    assert torch.all(out[0, 0, :10] == 255) and torch.all(out[0, :10, 0] == 255)  # generated up to the border
    assert torch.equal(out[0, :, f.box[2]:], torch.from_numpy(photo[:, f.box[2]:]))


def test_paste_back_checks_its_inputs():
    photo, f = photo_and_framing((60, 30, 90, 60))
    with pytest.raises(ValueError, match="framing was made for a 160x90 photo"):
        paste_back(torch.zeros(1, 48, 48, 3), photo[:, :100], f)
    with pytest.raises(ValueError, match="48x48"):
        paste_back(torch.zeros(1, 64, 64, 3), photo, f)
    with pytest.raises(ValueError, match="feather"):
        PasteBack(photo, f, feather=0.9)
    with pytest.raises(ValueError, match="margin"):
        framing_for_face((0, 0, 10, 10), (90, 160), 48, margin=float("nan"))
    with pytest.raises(ValueError, match="empty"):
        Framing((5, 5, 5, 9), (90, 160), (48, 48))


# ---------------------------------------------------------------------------- command line and nodes
def short_speech(path, seconds=0.4):
    from emo_core.preprocess.audio_io import load_audio

    wav = (np.clip(load_audio(SPEECH)[:int(16000 * seconds)], -1, 1) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(wav.tobytes())
    return path


def test_cli_pastes_the_animated_face_back_into_the_wide_photo(analyzer, wide_photo, tmp_path, capsys):
    import av

    from emo_core.__main__ import main
    from emo_core.video_out import probe

    photo, truth = wide_photo
    Image.fromarray(photo).save(tmp_path / "wide.png")
    speech = short_speech(tmp_path / "s.wav")
    args = ["generate", "--image", str(tmp_path / "wide.png"), "--audio", str(speech), "--tiny", "--steps", "1"]
    assert main([*args, "-o", str(tmp_path / "pasted.mp4")]) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("face score"))
    assert "640x360 photo" in line
    info = probe(tmp_path / "pasted.mp4")
    assert (info["width"], info["height"]) == (640, 360) and info["video_frames"] == 10
    with av.open(str(tmp_path / "pasted.mp4")) as c:
        frame = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(np.float32)
    diff = np.abs(frame - photo).mean(-1)
    assert diff[:, :300].mean() < 3  # away from the face: the photo (H.264 loss only)
    fx, fy = (round(v) for v in centre(truth))
    assert diff[fy - 10:fy + 10, fx - 10:fx + 10].mean() > 20  # the face: the tiny model's noise
    assert main([*args, "-o", str(tmp_path / "square.mp4"), "--no-paste-back", "--margin", "0.8"]) == 0
    assert (probe(tmp_path / "square.mp4")["width"], probe(tmp_path / "square.mp4")["height"]) == (64, 64)


def test_cli_refuses_the_cat_with_the_way_out(analyzer, tmp_path):
    from emo_core.__main__ import main

    Image.fromarray(data.chelsea()).save(tmp_path / "cat.png")
    with pytest.raises(SystemExit) as err:
        main(["generate", "--image", str(tmp_path / "cat.png"), "--audio", str(SPEECH), "--tiny",
              "-o", str(tmp_path / "o.mp4")])
    assert "face" in str(err.value) and "--no-face full_frame" in str(err.value)
    assert not (tmp_path / "o.mp4").exists()
    with pytest.raises(SystemExit) as err:
        main(["generate", "--image", str(tmp_path / "cat.png"), "--audio", str(SPEECH), "--tiny",
              "-o", str(tmp_path / "o.mp4"), "--margin", "-1"])
    assert err.value.code == 2


def test_nodes_frame_and_paste_back(analyzer, wide_photo):
    from nodes.common import EmoNodeError
    from nodes.loader import TINY_CHOICE, EmoModelLoader
    from nodes.paste import EmoPasteBack
    from nodes.reference import EmoReferenceEncode

    photo, truth = wide_photo
    image = torch.from_numpy(photo.astype(np.float32) / 255)[None]
    model = EmoModelLoader().load(TINY_CHOICE)[0]
    ref, portrait, framing = EmoReferenceEncode().encode(model, image, size=64)
    assert portrait.shape == (1, 64, 64, 3) and isinstance(framing, Framing)
    assert inside(centre(framing.face_box), truth, slack=5)
    (out,) = EmoPasteBack().paste(portrait.repeat(3, 1, 1, 1), image, framing, feather=0.1)
    assert out.shape == (3, 360, 640, 3)
    x0, y0, x1, y1 = framing.box
    assert torch.equal(out[:, :, :x0], image[:, :, :x0].expand(3, -1, -1, -1))
    with pytest.raises(EmoNodeError, match="photo the portrait was prepared from"):
        EmoPasteBack().paste(portrait, image[:, :, :600], framing)
    cat = torch.from_numpy(data.chelsea().astype(np.float32) / 255)[None]
    with pytest.raises(EmoNodeError, match="if_no_face"):
        EmoReferenceEncode().encode(model, cat, size=64)
    with pytest.warns(UserWarning, match="no (credible )?face"):  # the detector may or may not report the cat
        _, _, fallback = EmoReferenceEncode().encode(model, cat, size=64, if_no_face="full_frame")
    assert fallback.mode == "full_frame"
