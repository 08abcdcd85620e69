"""`python -m emo_core prepare`: real portrait video -> shard; bad inputs skipped with reasons;
resume without redoing finished videos; atomic shards."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from emo_core.__main__ import main as cli
from emo_core.train import data as D
from emo_core.train.loop import write_video

pytest.importorskip("mediapipe")
skdata = pytest.importorskip("skimage.data")


def _portrait_frames(n: int, side: int = 256) -> np.ndarray:
    from emo_core.eval.video_io import resize_uint8

    img = resize_uint8(skdata.astronaut()[None], side)[0]
    out = []
    for i in range(n):  # a slow pan: the face moves a few pixels per frame
        out.append(np.roll(img, (i // 2, i), axis=(0, 1)))
    return np.stack(out)


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.2 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("videos")
    write_video(d / "talk.mp4", _portrait_frames(24), 25, audio=_tone(24 / 25))
    write_video(d / "silent.mp4", _portrait_frames(24), 25)
    write_video(d / "short.mp4", _portrait_frames(4), 25, audio=_tone(4 / 25))
    write_video(d / "noface.mp4", np.full((24, 128, 128, 3), 90, np.uint8), 25, audio=_tone(24 / 25))
    (d / "empty.mp4").write_bytes(b"")
    (d / "corrupt.mp4").write_bytes(os.urandom(4000))
    return d


def test_prepare_real_video_bad_inputs_and_resume(videos, tmp_path, capsys):
    out = tmp_path / "shards"
    args = ["prepare", str(videos), str(out), "--size", "64", "--min-frames", "8", "--workers", "2",
            "--frame-format", "jpeg"]
    assert cli(args) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert [Path(s["source"]).name for s in man["shards"]] == ["talk.mp4"]
    reasons = {Path(s["video"]).name: s["reason"] for s in man["skipped"]}
    assert set(reasons) == {"silent.mp4", "short.mp4", "noface.mp4", "empty.mp4", "corrupt.mp4"}
    assert "no audio" in reasons["silent.mp4"]
    assert "too short" in reasons["short.mp4"]
    assert "no face" in reasons["noface.mp4"]
    assert "empty" in reasons["empty.mp4"] or "decode" in reasons["empty.mp4"]
    assert "decode" in reasons["corrupt.mp4"]

    info = D.list_shards(out)[0]
    assert info.num_frames == 24 and info.size == 64 and info.audio_kind == "waveform"
    sh = D.Shard(info)
    frames = sh.frames([0, 23])
    assert frames.shape == (2, 64, 64, 3) and frames.dtype.__str__() == "torch.uint8"
    boxes = sh.tensor("boxes")
    assert boxes.shape == (24, 4)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    assert (cx[-1] - cx[0]) > 0  # the pan moves the face right inside the fixed crop
    assert sh.tensor("speed").shape == (24,) and sh.tensor("rotations").shape == (24, 3, 3)
    assert sh.tensor("audio").shape == (24 * 640,)
    assert not list(out.glob(".*.part"))

    # resume: nothing is redone, the shard is untouched
    shard_file = out / man["shards"][0]["shard"]
    mtime = shard_file.stat().st_mtime_ns
    capsys.readouterr()
    assert cli(args) == 0
    assert "0 to prepare" in capsys.readouterr().out
    assert shard_file.stat().st_mtime_ns == mtime

    # a crash after writing a shard but before the manifest update: kept, not redone;
    # a crash while writing leaves only a hidden .part file, which is removed
    man2 = {"shards": [], "skipped": man["skipped"]}
    D.write_manifest(out, man2)
    (out / ".talk.safetensors.123.part").write_bytes(b"half")
    assert cli(args) == 0
    assert json.loads((out / "manifest.json").read_text())["shards"][0]["shard"] == shard_file.name
    assert shard_file.stat().st_mtime_ns == mtime
    assert not list(out.glob(".*.part"))


def test_write_shard_is_atomic(tmp_path, monkeypatch):
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    args = dict(fps=25, source="x", audio=np.zeros(3 * 640, np.float32))

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        D.write_shard(tmp_path / "a.safetensors", frames, np.zeros((3, 4)), np.zeros((3, 3, 3)), np.zeros(3), **args)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    with pytest.raises(D.ShardError, match="boxes"):
        D.write_shard(tmp_path / "a.safetensors", frames, np.zeros((2, 4)), np.zeros((3, 3, 3)), np.zeros(3), **args)
    with pytest.raises(D.ShardError, match="not a readable shard"):
        (tmp_path / "bad.safetensors").write_bytes(b"garbage")
        D.shard_info(tmp_path / "bad.safetensors")


def test_prepare_argument_errors(tmp_path, capsys):
    assert cli(["prepare", str(tmp_path / "nope"), str(tmp_path / "o")]) == 2
    assert cli(["prepare", str(tmp_path), str(tmp_path / "o"), "--audio", "features"]) == 2
    assert "wav2vec" in capsys.readouterr().err
    assert cli(["prepare", str(tmp_path), str(tmp_path / "o")]) == 2
    assert "no videos" in capsys.readouterr().err


def test_prepare_with_wav2vec_features(videos, tmp_path, hallo_golden):
    """--audio features: per-frame wav2vec features (tiny golden wav2vec2 folder) in the shard."""
    from emo_core.preprocess.audio_features import load_wav2vec

    w2v = hallo_golden / "wav2vec2"
    model = load_wav2vec(w2v)
    only = tmp_path / "one"
    only.mkdir()
    (only / "talk.mp4").write_bytes((videos / "talk.mp4").read_bytes())
    out = tmp_path / "shards"
    assert cli(["prepare", str(only), str(out), "--size", "64", "--min-frames", "8", "--workers", "1",
                "--audio", "features", "--wav2vec", str(w2v)]) == 0
    info = D.list_shards(out)[0]
    assert info.audio_kind == "features"
    feats = D.Shard(info).tensor("audio_features")
    layers = model.config.num_hidden_layers
    assert feats.shape == (24, layers, model.config.hidden_size)
