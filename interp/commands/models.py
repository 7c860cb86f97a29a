"""`interp models`: list the model specs and which are available locally."""

from interp.arch import family_table
from interp.models import model_availability


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
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list model specs and local availability")
    parser.set_defaults(func=run)
