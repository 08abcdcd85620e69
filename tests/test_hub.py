"""emo_core.hub: atomic download, sha256 checks, zip members, clear offline errors.
Only file:// URLs and a local http.server on 127.0.0.1 are used."""
import hashlib
import http.server
import socket
import threading
import zipfile
from functools import partial

import pytest

from emo_core import hub


@pytest.fixture()
def served(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))

    class Quiet(handler.func):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_download_with_progress_and_sha(served, tmp_path):
    root, base = served
    payload = b"model-bytes" * 50000
    (root / "m.onnx").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    calls = []
    dest = tmp_path / "models" / "sub" / "m.onnx"
    out = hub.ensure_file(f"{base}/m.onnx", dest, sha256=digest, progress_callback=lambda d, t: calls.append((d, t)))
    assert out == dest and dest.read_bytes() == payload
    assert calls[0][0] == 0 and calls[-1] == (len(payload), len(payload))
    assert [p.name for p in dest.parent.iterdir()] == ["m.onnx"]  # no temp files left
    # second call: no download (the server file is gone)
    (root / "m.onnx").unlink()
    assert hub.ensure_file(f"{base}/m.onnx", dest, sha256=digest) == dest


def test_file_url_and_checksum_mismatch(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    dest = tmp_path / "out" / "dst.bin"
    with pytest.raises(hub.ChecksumMismatch, match="expected"):
        hub.ensure_file(src.as_uri(), dest, sha256="0" * 64)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []
    hub.ensure_file(src.as_uri(), dest, sha256=hashlib.sha256(b"abc").hexdigest())
    assert dest.read_bytes() == b"abc"
    with pytest.raises(hub.ChecksumMismatch, match="delete it"):
        hub.ensure_file(src.as_uri(), dest, sha256="1" * 64)


def test_offline_error_says_what_to_put_where(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/face_landmarker.task"
    dest = tmp_path / "models" / "face_landmarker.task"
    with pytest.raises(hub.ModelFileMissing) as err:
        hub.ensure_file(url, dest, timeout=5)
    msg = str(err.value)
    assert str(dest) in msg and url in msg and "Put the file at" in msg
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_missing_remote_file(served, tmp_path):
    _, base = served
    with pytest.raises(hub.ModelFileMissing, match="HTTPError"):
        hub.ensure_file(f"{base}/nope.bin", tmp_path / "nope.bin")


def test_zip_member(served, tmp_path):
    root, base = served
    with zipfile.ZipFile(root / "pack.zip", "w") as zf:
        zf.writestr("buffalo_l/w600k_r50.onnx", b"weights")
        zf.writestr("buffalo_l/other.onnx", b"x")
    dest = tmp_path / "w600k_r50.onnx"
    hub.ensure_file(f"{base}/pack.zip", dest, archive_member="w600k_r50.onnx")
    assert dest.read_bytes() == b"weights"
    with pytest.raises(hub.ModelFileMissing, match="no absent.onnx"):
        hub.ensure_file(f"{base}/pack.zip", tmp_path / "absent.onnx", archive_member="absent.onnx")


def test_registry_and_no_download(tmp_path):
    for name in ("face_landmarker.task", "blaze_face_short_range.tflite", "glintr100.onnx", "w600k_r50.onnx"):
        assert name in hub.KNOWN_FILES and hub.KNOWN_FILES[name].url.startswith("https://")
    with pytest.raises(hub.ModelFileMissing) as err:
        hub.ensure_known("face_landmarker.task", tmp_path, download=False)
    assert str(tmp_path / "face_landmarker.task") in str(err.value)
    assert "storage.googleapis.com" in str(err.value)
    (tmp_path / "glintr100.onnx").write_bytes(b"present")
    assert hub.ensure_known("glintr100.onnx", tmp_path, download=False).read_bytes() == b"present"
    with pytest.raises(KeyError):
        hub.ensure_known("nope.bin", tmp_path)
