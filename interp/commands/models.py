"""`interp models`: list the model specs and which are available locally."""

from interp.models import model_availability


def run(args) -> int:
    rows = model_availability()
    width = max(len(spec) for spec, _ in rows)
    for spec, status in rows:
        print(f"{spec:<{width}}  {status}")
    print("\nAlso accepted: a path to a local Hugging Face model folder.")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list model specs and local availability")
    parser.set_defaults(func=run)
