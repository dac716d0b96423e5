"""The `gencore` command. Each subcommand lives in gencore/commands/<name>.py with `add_parser(subparsers)` and
`run(args) -> int`; modules are imported only when needed so `gencore --help` stays fast."""
from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand name -> module under gencore.commands, in the order `gencore --help` lists them.
COMMANDS = {
    "demo": "demo",
    "train": "train",
    "sample": "sample",
    "eval": "evaluate",
    "bench": "bench",
    "info": "info",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gencore", description="Fast GAN and diffusion training and sampling.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(f"gencore.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"gencore.commands.{module}":
                raise
            continue
        p = mod.add_parser(sub, name)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as exc:  # user errors: a message, not a traceback
        print(f"gencore {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
