"""The `interp` command line. Each module in `interp.commands` adds one subcommand.

A command module (name not starting with "_") defines `register(subparsers)`, which adds a
parser whose `func(args)` runs the command and returns an exit code.
"""

import argparse
import importlib
import pkgutil
import sys

import interp.commands
from interp.models import ModelUnavailableError, UnknownModelError
from interp.nodes import NodeError
from interp.outputs import OverwriteError

# Errors that are the user's to fix: print one clear message, no traceback.
USER_ERRORS = (ModelUnavailableError, UnknownModelError, NodeError, OverwriteError,
               FileNotFoundError, ValueError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interp", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"interp {interp.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(interp.commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"interp.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        print(f"interp {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
