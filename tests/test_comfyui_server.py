"""Against a real ComfyUI: start it with --cpu on 127.0.0.1, check our nodes in /object_info,
POST every shipped API workflow (tiny random weights, 64 px, 2 steps) and wait for success.

Needs a ComfyUI checkout named by $EMO_COMFYUI_DIR and $EMO_COMFYUI_PYTHON, a Python that has
ComfyUI's requirements and this pack's requirements.txt installed the README's way (default:
the current one); skipped otherwise. That Python must pass `pip check` and hold every
requirement of requirements.txt. The server gets a throw-away base directory (custom_nodes/
with a link to this checkout, the sample inputs in input/, an empty models/), an in-memory
database and a free port; it is stopped afterwards. The face model files are served by a
127.0.0.1 mirror (``$EMO_FACE_MODELS_URL``, the exact files of the public URLs, see
face_models.py): EMO Face Mask downloads them into models/emo/face_analysis on first use,
as it would for a new user.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from face_models import LANDMARKER, MIRROR_ENV, face_model_files, serve  # noqa: F401 (fixture)
from test_workflows import family_of, tiny

REPO = Path(__file__).resolve().parents[1]
COMFY = os.environ.get("EMO_COMFYUI_DIR")
PYTHON = os.environ.get("EMO_COMFYUI_PYTHON", sys.executable)
OUR_NODES = ("EmoModelLoader", "EmoAudioEncode", "EmoReferenceEncode", "EmoFaceMask", "EmoSpeed", "EmoSampleClip",
             "EmoDecodeClip", "EmoGenerate", "EmoPasteBack", "EmoEvaluate", "EmoGuider", "EmoScheduler")

pytestmark = pytest.mark.skipif(
    not COMFY or not (Path(COMFY) / "main.py").is_file(),
    reason="no ComfyUI checkout: set EMO_COMFYUI_DIR to one (and EMO_COMFYUI_PYTHON to a Python with its "
           "requirements) to run the nodes inside a real ComfyUI server")


def _get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _run_python(*args, timeout=300):
    return subprocess.run([PYTHON, *args], capture_output=True, text=True, timeout=timeout)


def test_pip_check_is_clean():
    """Installing the pack's requirements downgraded or broke nothing in ComfyUI's Python."""
    r = _run_python("-m", "pip", "check")
    assert r.returncode == 0, f"pip check in {PYTHON}:\n{r.stdout}{r.stderr}"


def test_pack_requirements_are_installed():
    """Every line of requirements.txt is satisfied in ComfyUI's Python (mediapipe with the Tasks API)."""
    code = (
        "import sys, importlib.metadata as md\n"
        "from packaging.requirements import Requirement\n"
        "bad = []\n"
        "for line in open(sys.argv[1]):\n"
        "    line = line.split('#')[0].strip()\n"
        "    if not line: continue\n"
        "    r = Requirement(line)\n"
        "    try: v = md.version(r.name)\n"
        "    except md.PackageNotFoundError: bad.append(f'{r.name}: not installed'); continue\n"
        "    if not r.specifier.contains(v, prereleases=True): bad.append(f'{r.name} {v} does not satisfy {r.specifier}')\n"
        "print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n"
    )
    r = _run_python("-c", code, str(REPO / "requirements.txt"))
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run_python("-c", "from mediapipe.tasks.python import vision; print(vision.FaceLandmarker.__name__)")
    assert r.returncode == 0 and "FaceLandmarker" in r.stdout, r.stderr[-2000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory, face_model_files):
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "emo-portrait").symlink_to(REPO, target_is_directory=True)
    (base / "input").mkdir()
    for f in (REPO / "samples").iterdir():
        shutil.copy(f, base / "input" / f.name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(base / "server.log", "w")
    mirror = serve(face_model_files)
    env = {k: v for k, v in os.environ.items() if k not in ("EMO_MODELS_DIR", MIRROR_ENV)}
    env[MIRROR_ENV] = mirror.__enter__()
    proc = subprocess.Popen([PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--base-directory", str(base), "--database-url", "sqlite:///:memory:",
                             "--disable-auto-launch"], cwd=COMFY, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {proc.returncode}:\n{(base / 'server.log').read_text()[-4000:]}")
            try:
                _get(url + "/system_stats", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.time() > deadline:
                    pytest.fail("ComfyUI did not start within 300 s")
                time.sleep(2)
        yield url, base, mirror
    finally:
        mirror.__exit__(None, None, None)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_our_nodes_are_listed(server):
    url, _, _ = server
    info = _get(url + "/object_info")
    for name in OUR_NODES:
        assert name in info, f"{name} missing from /object_info"
        assert info[name]["category"] == "EMO"
        for section, inputs in info[name]["input"].items():
            if section in ("required", "optional"):
                for inp, spec in inputs.items():
                    assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{inp} shows no tooltip"
    assert "EMO_MODEL" in info["EmoGenerate"]["input"]["required"]["emo_model"][0]
    assert info["EmoGenerate"]["output"] == ["IMAGE", "AUDIO", "VIDEO", "FLOAT"]


def _post(url, prompt):
    body = json.dumps({"prompt": prompt, "client_id": uuid.uuid4().hex}).encode()
    req = urllib.request.Request(url + "/prompt", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        pytest.fail(f"/prompt refused the workflow: {e.read().decode()[:3000]}")


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "workflows" / "api").glob("*.json")))
def test_workflow_runs_in_comfyui(server, name):
    url, base, _ = server
    prompt = json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())
    family = family_of(prompt)
    pid = _post(url, tiny(prompt, family))["prompt_id"]
    deadline = time.time() + 600
    while time.time() < deadline:
        hist = _get(url + f"/history/{pid}")
        if pid in hist:
            status = hist[pid]["status"]
            assert status.get("status_str") == "success", json.dumps(status.get("messages"))[:3000]
            break
        time.sleep(1)
    else:
        pytest.fail(f"{name} did not finish within 600 s")
    saved = list((base / "output").rglob("*.mp4"))
    assert saved, "SaveVideo wrote no mp4"
    from emo_core.video_out import probe

    info = probe(max(saved, key=lambda p: p.stat().st_mtime))
    assert info["video_frames"] > 0 and info["audio_codec"] is not None


def test_face_models_were_downloaded_once_into_the_models_folder(server):
    """After the workflows: the first EMO Face Mask fetched the landmarker bundle (nothing else)
    into ComfyUI's models/emo/face_analysis, complete and with the pinned sha256."""
    from emo_core import hub

    _, base, mirror = server
    path = base / "models" / "emo" / "face_analysis" / LANDMARKER
    assert mirror.requests == [f"/{LANDMARKER}"], mirror.requests
    assert hub.sha256_of(path) == hub.KNOWN_FILES[LANDMARKER].sha256
    assert sorted(p.name for p in path.parent.iterdir()) == [LANDMARKER]
