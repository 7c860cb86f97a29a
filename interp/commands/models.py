"""`interp models`: list the model specs and which are available locally; `--verify` hashes
the converted offline model and converts it again if it is damaged."""

import sys

from interp.arch import family_table
from interp.models import model_availability
from interp.models.smollm2 import ensure_smollm2, is_converted, smollm2_folder


def run(args) -> int:
    rows = model_availability()
    width = max(len(spec) for spec, _ in rows)
    for spec, status in rows:
        print(f"{spec:<{width}}  {status}")
    print("\nAlso accepted: a path to a local Hugging Face model folder.")
    print("\nModel families (sweeps: fast = exact batched engine; general = one hooked "
          "forward per patch, exact but slower):")
    for family, classes, path in family_table():
        print(f"  {family:<10} {path:<8} {classes}")
    return verify() if args.verify else 0


def verify() -> int:
    """Hash every file of the converted SmolLM2 folder (convert again when damaged)."""
    if not is_converted():
        print(f"\nverify: {smollm2_folder()} is not converted yet; nothing to verify.")
        return 0
    print(f"\nverify: hashing every file of {smollm2_folder()} ...", file=sys.stderr)
    folder = ensure_smollm2(full=True)
    print(f"verify: {folder}: every file matches its recorded sha256.")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list model specs and local availability")
    parser.add_argument("--verify", action="store_true",
                        help="hash the converted smollm2-135m files against their recorded "
                             "sha256 (a damaged folder is converted again)")
    parser.set_defaults(func=run)
