"""Command line: ``python -m emo_core <command> ...``.

Each command lives in its own module exposing ``add_arguments(parser)`` and ``main(args)``;
modules are imported only when their command runs, so ``--help`` stays fast.
"""
import argparse
import importlib
import sys

COMMANDS = {
    "generate": ("emo_core.cli_generate", "make a talking/singing video from a portrait and audio"),
    "parity": ("emo_core.parity", "check our modules against a golden folder of Hallo outputs"),
    "prepare": ("emo_core.train.prepare", "turn talking-face videos into training shards"),
    "train": ("emo_core.train.cli", "train one EMO stage from a config"),
    "evaluate": ("emo_core.eval.cli", "compute FID/FVD/SyncNet/F-SIM/E-FID and motion statistics"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emo_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text)
        sp.set_defaults(_module=module)
    args, rest = parser.parse_known_args(argv)
    module = importlib.import_module(args._module)
    sp = argparse.ArgumentParser(prog=f"python -m emo_core {args.command}")
    module.add_arguments(sp)
    return int(module.main(sp.parse_args(rest)) or 0)


if __name__ == "__main__":
    sys.exit(main())
