"""Run experiment suites and turn their results into docs (docs/reproducing.md).

    python tools/experiments.py run configs/experiments/gpu.yaml --group headline [--group G2] \\
        --work outputs/experiments --results outputs/experiments/results [--max-seconds 560]
    python tools/experiments.py proposals configs/experiments/gpu.yaml      # selective search caches (CPU)
    python tools/experiments.py list configs/experiments/gpu.yaml
    python tools/experiments.py report outputs/experiments/results --write docs/results.md \\
        --plot docs/speed_accuracy_bccd.png

The library is ``detkit.analysis.suite.experiments`` (suites, runs) and
``detkit.analysis.suite.results_report`` (tables, plot).
"""
from __future__ import annotations

import argparse
import sys


from detkit.analysis.suite.experiments import SuiteError, load_suite, precompute_proposals, run_groups
from detkit.analysis.suite.results_report import ReportError, load_groups, plot_speed_accuracy, write_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the runs of some groups of a suite")
    r.add_argument("suite")
    r.add_argument("--group", action="append", required=True, help="group to run (repeatable, in order)")
    r.add_argument("--work", default="outputs/experiments", help="run folders go to <work>/<run name>")
    r.add_argument("--results", default="outputs/experiments/results", help="<results>/<group>.json")
    r.add_argument("--max-seconds", type=float, default=None,
                   help="do not start a run whose budget_s no longer fits; kill one that overruns")
    pr = sub.add_parser("proposals", help="compute the selective search caches the suite's runs read")
    pr.add_argument("suite")
    pr.add_argument("--group", action="append", default=None)
    pr.add_argument("--workers", type=int, default=2)
    ls = sub.add_parser("list", help="print the suite's groups, runs, budgets and commands")
    ls.add_argument("suite")
    ls.add_argument("--work", default="outputs/experiments")
    rep = sub.add_parser("report", help="group JSONs -> tables in a markdown file (+ a plot)")
    rep.add_argument("results", nargs="+", help="group JSON files or folders of them")
    rep.add_argument("--write", default="docs/results.md")
    rep.add_argument("--plot", default=None, help="PNG of test ms/img vs VOC07 mAP on --plot-data")
    rep.add_argument("--plot-data", default="bccd")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "report":
            groups = load_groups(args.results)
            print(f"wrote {write_report(groups, args.write)} ({', '.join(g['group'] for g in groups)})")
            if args.plot:
                print(f"wrote {plot_speed_accuracy(groups, args.plot, args.plot_data)}")
            return 0
        suite = load_suite(args.suite)
        if args.command == "list":
            for g, runs in suite["groups"].items():
                budget = sum(r.budget_s or 0 for r in runs)
                print(f"{g}: {len(runs)} runs, declared budget {budget:.0f} s")
                for r in runs:
                    print(f"  {r.name} ({r.kind}, {r.budget_s} s): "
                          f"{' '.join(r.command(args.work, suite['common'][r.kind], 'python')[1:])}")
            return 0
        if args.command == "proposals":
            dirs = precompute_proposals(suite, args.group, workers=args.workers)
            print(f"proposal caches ready in: {', '.join(dirs) or '(no run needs any)'}")
            return 0
        out = run_groups(suite, args.group, work=args.work, results=args.results, max_seconds=args.max_seconds)
    except (SuiteError, ReportError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = [f"{g}/{e['name']}" for g, doc in out.items() for e in doc["runs"] if e["status"] not in ("ok", "done")]
    print(f"results in {args.results}; " + (f"not finished: {', '.join(failed)}" if failed else "all runs finished"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
