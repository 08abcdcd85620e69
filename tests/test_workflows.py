"""Every shipped workflow: the UI copy converts to the API copy, and the API copy runs end to
end with tiny random weights through the in-repo executor (ComfyUI's validation and
execution semantics), with its outputs checked."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from comfy_executor import Executor, ValidationError, load_json, ui_to_api
from face_models import face_mirror, face_model_files  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
NAMES = [p.stem for p in WORKFLOWS]


@pytest.fixture(scope="module")
def node_classes():
    from nodes import NODE_CLASS_MAPPINGS

    return NODE_CLASS_MAPPINGS


@pytest.fixture()
def dirs(tmp_path, monkeypatch, face_mirror):
    """input/ with the samples, output/, an empty models folder and a loopback mirror of the
    face model files (EMO Face Mask downloads them on first use, as for a new user)."""
    inp, out = tmp_path / "input", tmp_path / "output"
    inp.mkdir()
    out.mkdir()
    for f in (REPO / "samples").iterdir():
        shutil.copy(f, inp / f.name)
    monkeypatch.setenv("EMO_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return inp, out


def family_of(prompt: dict) -> str:
    """The model family a shipped workflow is made for: EchoMimic by its loader choice, EMO (speed
    layers) when it measures speed, else Hallo."""
    if any(n["class_type"] == "EmoModelLoader" and str(n["inputs"]["model"]).startswith("echomimic")
           for n in prompt.values()):
        return "echomimic"
    return "emo" if any(n["class_type"] == "EmoSpeed" for n in prompt.values()) else "hallo"


def tiny(prompt: dict, family: str = "hallo") -> dict:
    """The test's only changes to a shipped workflow: tiny random weights of its family, 64 px, 2 steps."""
    from nodes.loader import TINY_FAMILIES

    choice = {f: c for c, f in TINY_FAMILIES.items()}[family]
    p = json.loads(json.dumps(prompt))
    for node in p.values():
        t, i = node["class_type"], node["inputs"]
        if t == "EmoModelLoader":
            i["model"] = choice
        elif t == "EmoReferenceEncode":
            i["size"] = 64
        elif t in ("EmoGenerate", "EmoSampleClip", "EmoScheduler"):
            i["steps"] = 2
    return p


def test_there_are_five_workflows_with_api_copies():
    assert len(WORKFLOWS) >= 5 and "echomimic_accelerated" in NAMES
    for p in WORKFLOWS:
        assert (REPO / "workflows" / "api" / p.name).is_file(), f"{p.name} has no API copy"


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_converts_to_its_api_copy(name, node_classes, dirs):
    ui = load_json(REPO / "workflows" / f"{name}.json")
    api = load_json(REPO / "workflows" / "api" / f"{name}.json")
    assert ui_to_api(ui, node_classes) == api
    # only core nodes besides ours
    ours = set(node_classes)
    core = {"LoadImage", "LoadAudio", "LoadVideo", "GetVideoComponents", "CreateVideo", "SaveVideo", "ImageScale",
            "ImageFlip", "TrimAudioDuration", "KSamplerSelect", "RandomNoise", "SamplerCustomAdvanced"}
    assert {n["class_type"] for n in api.values()} <= ours | core
    # every link in the UI file points at real nodes and slots
    ids = {n["id"]: n for n in ui["nodes"]}
    for lid, src, slot, dst, dslot, typ in ui["links"]:
        assert ids[src]["outputs"][slot]["type"] == typ
        assert ids[dst]["inputs"][dslot]["link"] == lid


@pytest.mark.parametrize("name", NAMES)
def test_api_workflow_validates_as_shipped(name, node_classes, dirs):
    inp, out = dirs
    Executor(node_classes, inp, out).validate(load_json(REPO / "workflows" / "api" / f"{name}.json"))


@pytest.mark.parametrize("name", NAMES)
def test_api_workflow_runs_with_tiny_weights(name, node_classes, dirs, face_mirror, tmp_path):
    from emo_core.preprocess.audio_io import load_audio
    from emo_core.video_out import probe

    inp, out = dirs
    prompt = load_json(REPO / "workflows" / "api" / f"{name}.json")
    family = family_of(prompt)
    result = Executor(node_classes, inp, out).run(tiny(prompt, family))
    if not any(n["class_type"] == "EmoGenerate" for n in prompt.values()):
        return check_custom_sampling(prompt, result, out)
    gen_id = next(k for k, n in prompt.items() if n["class_type"] == "EmoGenerate")
    images, audio, video, fps = result["outputs"][gen_id]
    # the audio the generator got, after any core node that edited it
    src = prompt[gen_id]["inputs"]["audio"]
    audio_in = result["outputs"][src[0]][src[1]]
    assert audio is audio_in, "AUDIO must pass through unchanged"
    seconds = audio_in["waveform"].shape[-1] / audio_in["sample_rate"]
    frames = math.floor(seconds * fps + 0.5)
    keep = prompt[gen_id]["inputs"]["keep_frames"]
    assert images.shape[0] == (frames if keep == "all" else 1)
    assert images.shape[1:] == (64, 64, 3) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    # the file behind VIDEO and the saved mp4
    saved = [Path(v) for ui in result["ui"].values() if ui for v in ui.get("videos", [])]
    assert len(saved) == 1 and saved[0].is_file()
    for path in (saved[0], Path(video.get_stream_source())):
        info = probe(path)
        assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
        assert info["video_frames"] == frames
        assert abs(info["video_seconds"] - seconds) <= 0.5 / fps + 1e-6
        assert abs(info["audio_seconds"] - seconds) < 0.15
    assert not list(out.rglob("*.part*")), "no half-written file may remain"
    # EMO Face Mask fetched the landmarker bundle once, into the models folder (as for a new user)
    assert face_mirror.requests == ["/face_landmarker.task"]
    assert (tmp_path / "models" / "emo" / "face_analysis" / "face_landmarker.task").is_file()
    if family == "echomimic":  # the accelerated model's settings, as shipped
        assert prompt[gen_id]["inputs"]["steps"] == 6 and prompt[gen_id]["inputs"]["cfg"] == 1.0
        assert "regions" not in prompt[gen_id]["inputs"] and "face_mask" in prompt[gen_id]["inputs"]
        assert fps == 24.0
    if name == "emo_in_larger_graph":
        assert seconds == pytest.approx(2.5, abs=1e-3)
        assert len(load_audio(inp / "speech.wav")) / 16000 > 3.0


def check_custom_sampling(prompt, result, out):
    """emo_custom_sampling: one clip through SamplerCustomAdvanced + EMO Guider, decoded and saved."""
    from emo_core.video_out import probe

    of = lambda t: next(k for k, n in prompt.items() if n["class_type"] == t)
    guider, latent, clips = result["outputs"][of("EmoGuider")]
    sampled, denoised = result["outputs"][of("SamplerCustomAdvanced")]
    f = latent["samples"].shape[0]
    assert latent["samples"].shape == (f, 4, 8, 8) and clips >= 1  # core's layout: frames in the batch, 64 px
    assert sampled["samples"].shape == latent["samples"].shape and torch.isfinite(sampled["samples"]).all()
    assert denoised["samples"].shape == latent["samples"].shape
    (images,) = result["outputs"][of("EmoDecodeClip")]
    assert images.shape == (f, 64, 64, 3) and 0.0 <= images.min() and images.max() <= 1.0
    saved = [Path(v) for ui in result["ui"].values() if ui for v in ui.get("videos", [])]
    assert len(saved) == 1 and probe(saved[0])["video_frames"] == f and probe(saved[0])["audio_codec"] == "aac"


@pytest.mark.parametrize("name", NAMES)
def test_workflows_saved_before_the_preset_widget_keep_their_values(name, node_classes):
    """'preset' is the last widget of EMO Generate and EMO Sample Clip: a UI workflow saved without
    it (its widgets_values one shorter) gives every other widget the value it had; the shipped
    ones say 'custom' (DDIM with their steps and cfg)."""
    ui = load_json(REPO / "workflows" / f"{name}.json")
    api = ui_to_api(ui, node_classes)
    old = json.loads(json.dumps(ui))
    sampling = [n for n in old["nodes"] if n["type"] in ("EmoGenerate", "EmoSampleClip")]
    for n in sampling:
        assert n["widgets_values"][-1] == "custom"
        n["widgets_values"] = n["widgets_values"][:-1]
    before = ui_to_api(old, node_classes)
    for n in sampling:
        assert api[str(n["id"])]["inputs"].pop("preset") == "custom" and "preset" not in before[str(n["id"])]["inputs"]
    assert before == api


def test_validation_reports_bad_wiring(node_classes, dirs):
    inp, out = dirs
    prompt = load_json(REPO / "workflows" / "api" / "emo_basic_talking.json")
    gen = next(k for k, n in prompt.items() if n["class_type"] == "EmoGenerate")
    bad = json.loads(json.dumps(prompt))
    bad[gen]["inputs"]["reference"] = [next(k for k, n in prompt.items() if n["class_type"] == "LoadImage"), 0]
    bad[gen]["inputs"]["steps"] = 0
    del bad[gen]["inputs"]["emo_audio"]
    with pytest.raises(ValidationError) as err:
        Executor(node_classes, inp, out).validate(bad)
    msg = str(err.value)
    assert "wants EMO_REFERENCE but gets IMAGE" in msg and "below the minimum" in msg and "'emo_audio' missing" in msg


def test_every_input_of_every_pack_node_has_a_tooltip(node_classes):
    missing = [f"{name}.{inp}" for name, cls in node_classes.items()
               for section in ("required", "optional") for inp, spec in cls.INPUT_TYPES().get(section, {}).items()
               if not (spec[1] if len(spec) > 1 else {}).get("tooltip")]
    assert not missing, f"inputs without a tooltip: {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_no_node_covers_another_in_the_editor(name):
    """Node rectangles, title bar included (30 units above "pos"), are pairwise disjoint; nodes
    that show a preview (Load Image / Load Video / Save Video) have room for it; the graph
    opens at a readable zoom."""
    ui = load_json(REPO / "workflows" / f"{name}.json")
    rects = {}
    for n in ui["nodes"]:
        (x, y), (w, h) = n["pos"], n["size"]
        assert w >= 200 and h >= 60, f"{n['type']} is {w}x{h}"
        if n["type"] in ("LoadImage", "LoadVideo", "SaveVideo"):
            assert h >= 380 and w >= 300, f"{n['type']} has no room for its preview ({w}x{h})"
        rects[f"{n['type']}#{n['id']}"] = (x, y - 30, x + w, y + h)
    names = sorted(rects)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ra, rb = rects[a], rects[b]
            overlap = min(ra[2], rb[2]) > max(ra[0], rb[0]) and min(ra[3], rb[3]) > max(ra[1], rb[1])
            assert not overlap, f"{a} {ra} overlaps {b} {rb}"
    # links run left to right (each input's source sits in an earlier column or above it)
    pos = {n["id"]: n["pos"] for n in ui["nodes"]}
    for _lid, src, _slot, dst, _dslot, _typ in ui["links"]:
        assert pos[src][0] < pos[dst][0] or (pos[src][0] == pos[dst][0] and pos[src][1] < pos[dst][1]), \
            f"link {src} -> {dst} runs backwards"
    assert ui["extra"]["ds"]["scale"] >= 0.7, "the graph should open at 70% zoom or closer"


def test_face_mask_offline_says_which_file_goes_where(tmp_path, monkeypatch):
    """No face model yet and no network: EMO Face Mask names the file, the models-folder path
    to put it at and its URL; nothing half-written remains."""
    import socket

    import numpy as np
    from PIL import Image

    from emo_core.hub import ModelFileMissing
    from nodes.face_mask import EmoFaceMask

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("EMO_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("EMO_FACE_MODELS_URL", f"http://127.0.0.1:{port}")
    image = torch.from_numpy(np.asarray(Image.open(REPO / "samples" / "portrait.png").convert("RGB"),
                                        np.float32) / 255)[None]
    with pytest.raises(ModelFileMissing) as err:
        EmoFaceMask().mask(image)
    dest = tmp_path / "models" / "emo" / "face_analysis" / "face_landmarker.task"
    assert str(dest) in str(err.value) and f"http://127.0.0.1:{port}/face_landmarker.task" in str(err.value)
    assert list(dest.parent.iterdir()) == []
