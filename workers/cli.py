"""The `enrich` command: one entry point; each installed package contributes its subcommands.

The runtime's own commands (`worker`, `tail`) are always there. Training, the Faust views and the dev tools
register theirs through the `enrich.commands` entry-point group (pyproject.toml), so this package never
imports them: a worker image without them simply has fewer subcommands.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from workers import commands

__all__ = ["build_parser", "main"]

COMMAND_GROUP = "enrich.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="enrich", description="Real-time listing enrichment")
    subparsers = parser.add_subparsers(dest="command", required=True)
    commands.register(subparsers)
    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        try:
            register = entry.load()
        except ModuleNotFoundError as exc:
            # The package is not installed here (the worker image leaves training/, views/ and devtools/
            # out); anything missing *inside* an installed package is a real error.
            top = entry.value.split(":")[0].split(".")[0]
            if exc.name is None or exc.name.split(".")[0] != top:
                raise
            continue
        register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; its exit status is one of `ExitCode` (argparse's usage errors exit 2 itself).

    An `EnrichError` that stops a command is printed as one line, with its code, instead of a traceback:
    the message names the setting to fix. Anything else is a bug and keeps its traceback (exit 1).
    """
    from workers.contract.errors import EnrichError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EnrichError as exc:
        code = exc.exit_code
        print(f"enrich {args.command}: {exc} [exit {int(code)}: {code.name.lower()}]", file=sys.stderr)
        return int(code)


if __name__ == "__main__":
    sys.exit(main())
