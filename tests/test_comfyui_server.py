"""Against a real ComfyUI: start it with --cpu on 127.0.0.1, check our nodes in /object_info,
POST every shipped API workflow (tiny random weights, 64 px, 2 steps) and wait for success.

Needs a ComfyUI checkout named by $EMO_COMFYUI_DIR (and $EMO_COMFYUI_PYTHON, a Python that has
ComfyUI's requirements and this pack's, default: the current one); skipped otherwise. The
server gets a throw-away base directory (custom_nodes/ with a link to this checkout, the
sample inputs in input/), an in-memory database and a free port; it is stopped afterwards.
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

from test_workflows import family_of, tiny

REPO = Path(__file__).resolve().parents[1]
COMFY = os.environ.get("EMO_COMFYUI_DIR")
PYTHON = os.environ.get("EMO_COMFYUI_PYTHON", sys.executable)
OUR_NODES = ("EmoModelLoader", "EmoAudioEncode", "EmoReferenceEncode", "EmoFaceMask", "EmoSpeed", "EmoSampleClip",
             "EmoDecodeClip", "EmoGenerate", "EmoEvaluate")

pytestmark = pytest.mark.skipif(
    not COMFY or not (Path(COMFY) / "main.py").is_file(),
    reason="no ComfyUI checkout: set EMO_COMFYUI_DIR to one (and EMO_COMFYUI_PYTHON to a Python with its "
           "requirements) to run the nodes inside a real ComfyUI server")


def _get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
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
    proc = subprocess.Popen([PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--base-directory", str(base), "--database-url", "sqlite:///:memory:",
                             "--disable-auto-launch"], cwd=COMFY, stdout=log, stderr=subprocess.STDOUT)
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
        yield url, base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_our_nodes_are_listed(server):
    url, _ = server
    info = _get(url + "/object_info")
    for name in OUR_NODES:
        assert name in info, f"{name} missing from /object_info"
        assert info[name]["category"] == "EMO"
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
    url, base = server
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
