"""Command line: ``python -m emo_core <command> ...``.

Each command lives in its own module exposing ``add_arguments(parser)`` and ``main(args)``;
modules are imported only when their command runs, so ``--help`` stays fast.
"""
import argparse
import importlib
import sys

COMMANDS = {
    "generate": ("emo_core.cli_generate", "make a talking/singing video from a portrait and audio"),
    "parity": ("emo_core.parity", "check our modules against a golden folder of Hallo/EchoMimic outputs"),
    "prepare": ("emo_core.train.prepare", "turn talking-face videos into training shards"),
    "train": ("emo_core.train.cli", "train one EMO stage from a config"),
    "evaluate": ("emo_core.eval.cli", "compute FID/FVD/SyncNet/F-SIM/E-FID and motion statistics"),
}


def usage() -> str:
    lines = ["usage: python -m emo_core <command> [options]   (python -m emo_core <command> --help)", "", "commands:"]
    lines += [f"  {name:10s} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, help_text = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python -m emo_core {command}", description=help_text)
    module.add_arguments(parser)
    return int(module.main(parser.parse_args(rest)) or 0)


if __name__ == "__main__":
    sys.exit(main())
