"""`interp report`: build the offline HTML report of a results folder."""

from pathlib import Path

from interp.commands._args import out_folder


def run(args) -> int:
    from interp.report import build_report, group_model

    report = build_report(args.out)
    for slug, page in report.pages.items():
        runs = [r for r in report.runs if r.slug == slug]
        plots = sum(len(r.plots) for r in runs)
        views = sum(len(r.views) for r in runs)
        broken = [r.experiment for r in runs if r.error]
        names = ", ".join(r.experiment for r in runs)
        print(f"{group_model(runs)}: {len(runs)} experiments ({names}), {plots} plots, "
              f"{views} attention views -> {page}"
              + (f"  [unreadable summary: {', '.join(broken)}]" if broken else ""))
    print(f"report: {len(report.runs)} runs of {len(report.pages)} models -> {report.index}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="build OUT/index.html and one page per model from OUT/*/*/summary.json")
    parser.add_argument("--out", type=out_folder, default=Path("results"),
                        help="results folder to scan and write into (default results/)")
    parser.set_defaults(func=run)
