"""Two CPU processes (gloo on 127.0.0.1) through ``accelerate launch``: they stay in sync, and
a run stopped and resumed from its checkpoint ends bit-identical to an uninterrupted one.

accelerate 1.x sends ``--cpu --num_processes 2`` to mpirun; ``--multi_gpu`` starts the
processes with torchrun instead, and ``Accelerator(cpu=True)`` in the driver makes them a
gloo (MULTI_CPU) group, so no GPU and no MPI are needed."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from emo_core.train import synthetic

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "test_train_ddp_driver.py"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(config: Path, out: Path, resume: str = "auto"):
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
           "--main_process_port", str(_port()), str(DRIVER), str(config), str(out), resume]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ranks = [json.loads((out / f"rank{i}.json").read_text()) for i in range(2)]
    assert all(x["world"] == 2 for x in ranks)
    return ranks


def _config(tmp: Path, shards: Path, out: Path, steps: int) -> Path:
    cfg = json.loads((REPO / "emo_core/train/configs/tiny_stage2.json").read_text())
    cfg.update(init={}, data={**cfg["data"], "shards": [str(shards)]})
    cfg["train"].update(batch_size=1, max_steps=steps, gradient_accumulation=2)
    cfg["output"].update(dir=str(out), checkpoint_every=2, log_every=1, progress=False)
    cfg["model"]["overrides"]["clip_frames"] = 2
    path = tmp / f"cfg_{out.name}_{steps}.json"
    path.write_text(json.dumps(cfg))
    return path



def test_two_processes_stay_in_sync_and_resume_exactly(tmp_path):
    shards = tmp_path / "shards"
    synthetic.make_dataset(shards, 4, 12, 64, seed=3)
    full = _launch(_config(tmp_path, shards, tmp_path / "full", 4), tmp_path / "r_full")
    assert full[0]["hash"] == full[1]["hash"]  # DDP kept both replicas identical
    assert full[0]["steps"] == 4

    part = tmp_path / "part"
    _launch(_config(tmp_path, shards, part, 2), tmp_path / "r_part")
    resumed = _launch(_config(tmp_path, shards, part, 4), tmp_path / "r_resumed")
    assert resumed[0]["hash"] == resumed[1]["hash"]
    assert resumed[0]["hash"] == full[0]["hash"]  # resumed run == uninterrupted run, bit for bit
    assert resumed[0]["losses"] == full[0]["losses"][2:]
    a = load_file(str(tmp_path / "full" / "checkpoint-000004" / "emo.safetensors"))
    b = load_file(str(part / "checkpoint-000004" / "emo.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)
