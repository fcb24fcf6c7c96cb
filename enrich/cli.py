"""The `enrich` command: one entry point, each package contributes its subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys

# Packages that add subcommands through `register(subparsers)`; imported lazily so `enrich --help` is fast.
COMMAND_MODULES = ("localservices.cli", "training.cli", "workers.cli", "bench.cli", "reliability.cli",
                   "views.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="enrich", description="Real-time listing enrichment")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # A slim image may leave a whole package out (say training/); anything else is a real error.
            if exc.name not in (module_name, module_name.split(".")[0]):
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
