"""Driver run by test_train_accelerate.py under ``accelerate launch`` (not a test itself):
trains from a config and writes each process's parameter checksum, to check that the
processes stay in sync."""
import hashlib
import json
import sys
from pathlib import Path


def _main(config: str, out: str, resume: str) -> None:
    import torch

    torch.set_num_threads(1)
    from accelerate import Accelerator

    from emo_core.train.loop import load_config, train

    cfg = load_config(config)
    acc = Accelerator(cpu=True)
    result = train(cfg, resume=resume, accelerator=acc, log=lambda s: None)
    net = acc.unwrap_model(acc._models[0]).net
    h = hashlib.sha256()
    for name, p in net.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().cpu().numpy().tobytes())
    Path(out, f"rank{acc.process_index}.json").write_text(json.dumps(
        {"hash": h.hexdigest(), "world": acc.num_processes, "steps": result.steps, "losses": result.losses}))


if __name__ == "__main__":
    _main(*sys.argv[1:4])
