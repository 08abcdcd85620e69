"""Audio input and wav2vec2 frame features: Hallo golden parity, real speech/singing,
frame counts at 25/30 fps, chunked vs whole-clip, and bad inputs."""
import math
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from emo_core.preprocess.audio_features import (
    AudioFeatureExtractor,
    hallo_audio_embedding,
    load_wav2vec,
    normalize_waveform,
    wav2vec_hidden_states,
    window_features,
)
from emo_core.preprocess.audio_io import AudioError, from_comfy_audio, load_audio, resample

SR = 16000


@pytest.fixture(scope="module")
def tiny_w2v(hallo_golden):
    return load_wav2vec(hallo_golden / "wav2vec2")


@pytest.fixture(scope="module")
def golden_f(hallo_golden):
    cases = load_file(str(hallo_golden / "cases.safetensors"))
    cases64 = load_file(str(hallo_golden / "cases_f64.safetensors"))
    return cases, cases64


def _tone(seconds, sr=SR, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    mono = 0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.1 * np.sin(3 * t))) + 0.02 * rng.standard_normal(len(t))
    wave = np.stack([mono * (0.5 + 0.5 * c) for c in range(channels)], axis=0)
    return wave.astype(np.float32)


# --------------------------------------------------------------------------- golden parity
def test_golden_hallo_wav2vec_float32(tiny_w2v, golden_f):
    cases, _ = golden_f
    raw = cases["f.raw_audio"].numpy()
    values = cases["f.input_values"]
    norm = normalize_waveform(raw)
    np.testing.assert_allclose(norm, values[: len(raw)].numpy(), atol=1e-6, rtol=0)
    assert torch.all(values[len(raw):] == 0)
    hs = wav2vec_hidden_states(tiny_w2v, values[None], 52)
    torch.testing.assert_close(hs, cases["f.hidden_states"], atol=1e-5, rtol=1e-5)
    emb, audio_length = hallo_audio_embedding(tiny_w2v, raw, fps=25, clip_length=4)
    assert audio_length == 50 and emb.shape == (52, 3, 32)
    torch.testing.assert_close(emb, cases["f.audio_emb"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(window_features(emb, 2), cases["f.windowed"], atol=1e-5, rtol=1e-5)


def test_golden_hallo_wav2vec_float64(hallo_golden, golden_f):
    cases, cases64 = golden_f
    model = load_wav2vec(hallo_golden / "wav2vec2", dtype=torch.float64)
    hs = wav2vec_hidden_states(model, cases["f.input_values"][None].double(), 52)
    torch.testing.assert_close(hs, cases64["f.hidden_states"], atol=1e-7, rtol=1e-7)
    emb, _ = hallo_audio_embedding(model, cases["f.raw_audio"].numpy(), fps=25, clip_length=4)
    torch.testing.assert_close(window_features(emb, 2), cases64["f.windowed"], atol=1e-7, rtol=1e-7)


def test_window_features_clamps_edges():
    emb = torch.arange(6.0)[:, None, None]
    w = window_features(emb, m=2)
    assert w.shape == (6, 5, 1, 1)
    assert w[0, :, 0, 0].tolist() == [0, 0, 0, 1, 2]
    assert w[5, :, 0, 0].tolist() == [3, 4, 5, 5, 5]
    torch.testing.assert_close(window_features(emb, 2, start=2, stop=4), w[2:4])


# --------------------------------------------------------------------------- real media
def _need_tools():
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install espeak-ng sox; install.sh does it)")


@pytest.fixture(scope="module")
def speech_file(tmp_path_factory):
    _need_tools()
    d = tmp_path_factory.mktemp("speech")
    raw = d / "raw.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), "The quick brown fox jumps over the lazy dog, twice."],
                   check=True, capture_output=True)
    return raw


@pytest.fixture(scope="module")
def sung_file(tmp_path_factory):
    """A sung melody: espeak-ng 'la' syllables at changing SSML pitches, stereo 44.1 kHz flac."""
    _need_tools()
    d = tmp_path_factory.mktemp("sung")
    notes = ["x-low", "low", "medium", "high", "x-high", "high", "medium", "low"]
    ssml = "<speak>" + " ".join(
        f'<prosody pitch="{p}" rate="slow">laa</prosody>' for p in notes) + "</speak>"
    raw = d / "sung.wav"
    subprocess.run(["espeak-ng", "-m", "-w", str(raw), ssml], check=True, capture_output=True)
    out = d / "sung.flac"
    subprocess.run(["sox", str(raw), "-r", "44100", "-c", "2", str(out)], check=True, capture_output=True)
    return out


def _frame_check(extractor_model, wave, fps):
    ext = AudioFeatureExtractor(extractor_model, fps=fps)
    emb = ext.encode(wave)
    expected = math.floor(len(wave) / SR * fps + 0.5)
    assert emb.shape == (expected, 3, 32)
    assert torch.isfinite(emb).all()
    win = ext.windows(emb)
    assert win.shape == (expected, 5, 3, 32)
    return emb


@pytest.mark.parametrize("fps", [25, 30])
def test_speech_frame_count(tiny_w2v, speech_file, tmp_path, fps):
    wave = load_audio(speech_file)
    assert wave.dtype == np.float32 and wave.ndim == 1
    # espeak writes 22050 Hz; make the duration deliberately not divide evenly into frames
    wave = wave[: len(wave) - (len(wave) % 640) + 217]
    assert (len(wave) / SR * fps) % 1 != 0
    _frame_check(tiny_w2v, wave, fps)
    # sox conversion to 16 kHz / 16-bit gives the same samples count rule
    conv = tmp_path / "b.wav"
    subprocess.run(["sox", str(speech_file), "-r", "16000", "-c", "1", "-b", "16", str(conv)], check=True)
    w2 = load_audio(conv)
    assert abs(len(w2) - len(load_audio(speech_file))) <= 2
    _frame_check(tiny_w2v, w2, fps)


@pytest.mark.parametrize("fps", [25, 30, 29.97])
def test_sung_frame_count(tiny_w2v, sung_file, fps):
    wave = load_audio(sung_file)
    info = sf.info(str(sung_file))
    assert info.channels == 2 and info.samplerate == 44100
    assert abs(len(wave) / SR - info.duration) < 1e-3
    _frame_check(tiny_w2v, wave, fps)


def test_chunked_matches_whole_clip(tiny_w2v, speech_file):
    speech = load_audio(speech_file)
    wave = np.concatenate([speech, speech[::-1], speech])[: 16000 * 9 + 333]
    whole = AudioFeatureExtractor(tiny_w2v, fps=25, chunk_seconds=100).encode(wave)
    chunked = AudioFeatureExtractor(tiny_w2v, fps=25, chunk_seconds=2.0, context_seconds=1.0).encode(wave)
    assert chunked.shape == whole.shape
    diff = (chunked - whole).abs()
    # the CNN and interpolation are exact under chunking; only attention context differs
    assert diff.max() < 0.05 * whole.abs().max(), diff.max()
    assert diff.mean() < 0.01 * whole.abs().mean(), diff.mean()
    # seams: frames at chunk boundaries are no worse than elsewhere by more than a small margin
    seams = torch.arange(50, whole.shape[0], 50)
    assert diff[seams].mean() < 0.02 * whole.abs().mean()


def test_ten_minute_audio_bounded_chunks(tiny_w2v, tmp_path):
    seconds = 600.0
    path = tmp_path / "long.wav"
    sf.write(str(path), _tone(seconds, sr=8000)[0], 8000, subtype="PCM_16")
    wave = load_audio(path)
    assert len(wave) == int(seconds * SR)
    longest = {"enc": 0, "cnn": 0}

    def enc_hook(_mod, args):
        longest["enc"] = max(longest["enc"], args[0].shape[1])

    def cnn_hook(_mod, args):
        longest["cnn"] = max(longest["cnn"], args[0].shape[-1])

    h1 = tiny_w2v.encoder.layers[0].register_forward_pre_hook(enc_hook)
    h2 = tiny_w2v.feature_extractor.conv_layers[0].conv.register_forward_pre_hook(cnn_hook)
    try:
        ext = AudioFeatureExtractor(tiny_w2v, fps=25, chunk_seconds=20, context_seconds=4)
        emb = ext.encode(wave)
    finally:
        h1.remove()
        h2.remove()
    assert emb.shape == (15000, 3, 32)
    assert torch.isfinite(emb).all()
    assert longest["enc"] <= 28 * 25
    assert longest["cnn"] <= 20 * SR
    win = ext.windows(emb, start=14990)
    assert win.shape == (10, 5, 3, 32)


# --------------------------------------------------------------------------- odd inputs
def test_silent_short_lowrate_stereo(tiny_w2v, tmp_path):
    ext25 = AudioFeatureExtractor(tiny_w2v, fps=25)
    silent = np.zeros(SR * 2 + 100, np.float32)
    emb = ext25.encode(silent)
    assert emb.shape[0] == 50 and torch.isfinite(emb).all()

    short = _tone(0.05)[0]
    assert ext25.encode(short).shape[0] == 1
    assert AudioFeatureExtractor(tiny_w2v, fps=30).encode(short).shape[0] == 2
    with pytest.raises(ValueError, match="too short"):
        ext25.encode(short[:100])

    p8 = tmp_path / "lo.wav"
    sf.write(str(p8), _tone(1.33, sr=8000)[0], 8000)
    w8 = load_audio(p8)
    assert len(w8) == int(1.33 * SR)
    assert ext25.encode(w8).shape[0] == 33

    p44 = tmp_path / "st.wav"
    st = _tone(1.01, sr=44100, channels=2)
    sf.write(str(p44), st.T, 44100, subtype="FLOAT")
    w44 = load_audio(p44)
    assert len(w44) == math.ceil(st.shape[1] * SR / 44100)
    np.testing.assert_allclose(w44, resample(st.mean(0), 44100, SR), atol=1e-6)


def test_comfy_audio_dict_matches_file(tmp_path):
    st = _tone(0.7, sr=44100, channels=2)
    p = tmp_path / "c.wav"
    sf.write(str(p), st.T, 44100, subtype="FLOAT")
    from_file = load_audio(p)
    from_dict = from_comfy_audio({"waveform": torch.from_numpy(st)[None], "sample_rate": 44100})
    np.testing.assert_allclose(from_dict, from_file, atol=1e-6)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        from_comfy_audio({"waveform": torch.from_numpy(st)[None].repeat(2, 1, 1), "sample_rate": 44100})
    assert any("first" in str(r.message) for r in rec)
    with pytest.raises(AudioError):
        from_comfy_audio({"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000})


def _write_av(path, wave, sr, with_video, codec="aac"):
    import av

    with av.open(str(path), "w") as out:
        if with_video:
            vs = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=25)
            vs.width, vs.height, vs.pix_fmt = 64, 64, "yuv420p"
        if wave is not None:
            a = out.add_stream(codec, rate=sr)
            a.layout = "mono"
        if with_video:
            for i in range(10):
                img = np.full((64, 64, 3), i * 20, np.uint8)
                for pkt in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(pkt)
            for pkt in vs.encode():
                out.mux(pkt)
        if wave is not None:
            frame_size = 1024
            pts = 0
            for s in range(0, len(wave), frame_size):
                chunk = wave[s: s + frame_size][None].astype(np.float32)
                fr = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                fr.sample_rate, fr.pts = sr, pts
                pts += chunk.shape[1]
                for pkt in a.encode(fr):
                    out.mux(pkt)
            for pkt in a.encode():
                out.mux(pkt)


@pytest.mark.parametrize("ext", ["flac", "ogg", "mp3", "m4a", "mp4", "mov"])
def test_formats(tmp_path, ext):
    wave = _tone(1.5, sr=SR)[0]
    path = tmp_path / f"a.{ext}"
    if ext in ("flac", "ogg", "mp3"):
        fmt = {"flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"), "mp3": ("MP3", "MPEG_LAYER_III")}[ext]
        sf.write(str(path), wave, SR, format=fmt[0], subtype=fmt[1])
    else:
        _write_av(path, wave, SR, with_video=ext != "m4a")
    got = load_audio(path)
    assert got.dtype == np.float32 and got.ndim == 1
    assert abs(len(got) - len(wave)) < 0.1 * SR  # lossy codecs add priming/padding samples
    n = min(len(got), len(wave)) - 4000
    # lossy codecs may shift by their priming delay: best correlation over small lags
    best = max(np.corrcoef(got[2000 + lag: 2000 + lag + n - 2000], wave[2000: n])[0, 1] for lag in range(-0, 3000, 16))
    assert best > 0.9, best


def test_bad_files_name_file_and_reason(tmp_path):
    with pytest.raises(AudioError, match=r"nothere\.wav: file not found"):
        load_audio(tmp_path / "nothere.wav")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav: file is empty"):
        load_audio(empty)
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError, match=r"junk\.mp3: ") as err:
        load_audio(junk)
    assert "soundfile" in str(err.value) or "decode" in str(err.value) or "open" in str(err.value)
    trunc = tmp_path / "trunc.wav"
    sf.write(str(trunc), _tone(0.5)[0], SR)
    trunc.write_bytes(trunc.read_bytes()[:30])
    with pytest.raises(AudioError, match=r"trunc\.wav: "):
        load_audio(trunc)
    silent_video = tmp_path / "novoice.mp4"
    _write_av(silent_video, None, SR, with_video=True)
    with pytest.raises(AudioError, match=r"novoice\.mp4: the file has no audio track"):
        load_audio(silent_video)
    with pytest.raises(AudioError, match="is a folder"):
        load_audio(tmp_path)


def test_load_wav2vec_old_weight_norm_layout_and_ctc_prefix(hallo_golden, tiny_w2v, tmp_path):
    """Real wav2vec2-base-960h files are Wav2Vec2ForCTC checkpoints with weight_g/weight_v."""
    from safetensors.torch import save_file

    src = hallo_golden / "wav2vec2"
    shutil.copy(src / "config.json", tmp_path / "config.json")
    renamed = {
        ("wav2vec2." + k).replace("parametrizations.weight.original0", "weight_g")
        .replace("parametrizations.weight.original1", "weight_v"): v
        for k, v in load_file(str(src / "model.safetensors")).items()
    }
    assert any(k.endswith("weight_g") for k in renamed)
    save_file(renamed, str(tmp_path / "model.safetensors"))
    other = load_wav2vec(tmp_path)
    x = torch.from_numpy(normalize_waveform(_tone(0.6)[0]))[None]
    torch.testing.assert_close(wav2vec_hidden_states(other, x, 15), wav2vec_hidden_states(tiny_w2v, x, 15), atol=0, rtol=0)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_wav2vec(tmp_path / "nowhere")


# --------------------------------------------------------------------------- encoder padding
def _m4a_length_without_cut(path, monkeypatch):
    from emo_core.preprocess import audio_io

    with monkeypatch.context() as m:
        m.setattr(audio_io, "_drop_end_padding", lambda data, *a: data)
        return len(load_audio(path))


@pytest.mark.parametrize("sr, seconds", [(44100, 2.013), (48000, 1.371), (16000, 2.013)])
def test_m4a_end_padding_is_cut(tmp_path, monkeypatch, sr, seconds):
    """AAC pads the last frame with silence (here 10 to 30 ms): the decoded audio is cut to the
    real duration, so the video gets round(real seconds x fps) frames, not one more. (Durations
    in whole milliseconds: the mp4 states its duration in milliseconds.)"""
    from emo_core.preprocess.audio_features import num_frames_for

    wave = _tone(seconds, sr=sr)[0]
    path = tmp_path / "a.m4a"
    _write_av(path, wave, sr, with_video=False)
    got = load_audio(path)
    assert abs(len(got) - round(len(wave) * SR / sr)) <= 1
    for fps in (25, 30):
        assert num_frames_for(len(got), fps) == math.floor(len(wave) / sr * fps + 0.5)
    padded = _m4a_length_without_cut(path, monkeypatch)
    assert padded > len(got) + 0.005 * SR  # the file does carry padding: the test is not vacuous
    assert num_frames_for(padded, 25) == num_frames_for(len(got), 25) + 1


def test_m4a_of_real_speech_matches_its_wav(tmp_path, monkeypatch, speech_file):
    """espeak-ng speech (22.05 kHz) encoded to m4a with PyAV: same length as the wav it came from."""
    import av

    data, sr = sf.read(str(speech_file), dtype="float32")
    path = tmp_path / "speech.m4a"
    rate = 44100  # AAC-friendly rate; the wav is resampled first, as a phone recording would be
    wave = resample(data, sr, rate)
    _write_av(path, wave, rate, with_video=False)
    with av.open(str(path)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
    got, ref = load_audio(path), load_audio(speech_file)
    assert abs(len(got) - len(ref)) <= 0.001 * SR + 2  # FFmpeg's mp4 muxer states the duration in milliseconds
    for fps in (25, 30, 24):
        assert math.floor(len(got) / SR * fps + 0.5) == math.floor(len(ref) / SR * fps + 0.5)
