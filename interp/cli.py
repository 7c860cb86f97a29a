"""The `interp` command line. Each module in `interp.commands` adds one subcommand.

A command module defines `register(subparsers)`, which adds a parser whose `func(args)` runs
the command and returns an exit code. Only the module of the command being run is imported
(`COMMANDS` lists them with their one-line help), so `interp --help` loads no heavy library.

Errors: an `interp.errors.UserError` (bad input, a missing model, an occupied folder) prints
as one line, `interp CMD: error: ...`, exit 1; any other exception is a bug and prints its
traceback. `--debug` prints the traceback of every error. Ctrl-C prints "interrupted" and
exits 130.
"""

import argparse
import importlib
import sys
import traceback

import interp
from interp.errors import UserError

# name -> one-line help; the module is interp.commands.<name with "-" as "_">
COMMANDS = {
    "analogies": "a - b + c word-vector analogies",
    "bench": "benchmark the patching sweeps (interp vs TransformerLens / naive)",
    "capitals": "logit lens on country -> capital prompts",
    "discover": "automated circuit discovery (EAP, EAP-IG, ACDC)",
    "evaluate-circuit": "faithfulness/completeness/minimality of a circuit file",
    "ffn-ablation": "MLP ablation, in-context restoration and o-vector transfer on the "
                    "capital task",
    "ioi": "IOI circuit: dataset, patching, classification, circuit evaluation, plots",
    "models": "list model specs and local availability",
    "report": "build OUT/index.html and one page per model from OUT/*/*/summary.json",
}
INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def _command_in(argv: list[str]) -> str | None:
    """The subcommand named in `argv` (its first non-option word), if it is one."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the command named in `argv` gets its full arguments (all of them
    when `argv` is None)."""
    parser = argparse.ArgumentParser(prog="interp", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"interp {interp.__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="print the full traceback of every error (also after COMMAND)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = COMMANDS if argv is None else {_command_in(argv)}
    for name, help_text in COMMANDS.items():
        if name in chosen:
            module = importlib.import_module(f"interp.commands.{name.replace('-', '_')}")
            module.register(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv  # accepted anywhere: `interp ioi ... --debug` too
    argv = [a for a in argv if a != "--debug"]
    command = _command_in(argv)
    name = f"interp {command}" if command else "interp"
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _report(debug)
        print(f"{name}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except UserError as err:
        _report(debug)
        print(f"{name}: error: {err}", file=sys.stderr)
        return 1


def _report(debug: bool) -> None:
    if debug:
        traceback.print_exc()


if __name__ == "__main__":
    sys.exit(main())
