"""``python -m emo_core train CONFIG`` (one process) or, for several processes / GPUs / nodes,
``accelerate launch [--num_processes N ...] -m emo_core train CONFIG``.

CONFIG is a JSON file (``emo_core/train/configs/stage{1,2,3}.json`` are the paper's
recipe); ``--set key.sub=value`` overrides single values (JSON or bare strings).
"""
from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("config", help="training config (JSON)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set train.max_steps=100 --set output.dir=runs/s1")
    parser.add_argument("--resume", default="auto",
                        help="'auto' (continue from the newest checkpoint in output.dir), 'never', or a checkpoint folder")
    parser.add_argument("--cpu", action="store_true",
                        help="run on CPU even where a GPU exists (several CPU processes: "
                             "accelerate launch --multi_gpu --num_processes N -m emo_core train CONFIG --cpu)")
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")


def main(args) -> int:
    from ..config import ConfigError
    from .data import ShardError
    from .init import InitError
    from .loop import TrainConfigError, load_config, train
    from .stages import StageError

    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(json.dumps(cfg, indent=1))
            return 0
        acc = None
        if args.cpu:
            from accelerate import Accelerator

            acc = Accelerator(cpu=True, mixed_precision=cfg["train"]["mixed_precision"])
        result = train(cfg, resume=args.resume, accelerator=acc)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (TrainConfigError, InitError, ShardError, StageError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"finished stage {cfg['stage']} at step {result.steps}: {result.final}")
    return 0
