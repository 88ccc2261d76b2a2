"""detkit's detector against torchvision's ``FasterRCNN`` on the same network, data and time budget.

    python tools/compare_train.py data=bccd data.root=DIR preset=cpu --budget 600 --seeds 0 1 \\
        --work outputs/compare/bccd --out bccd-600.json
    python tools/compare_train.py data=raccoon data.root=DIR preset=cpu --budget 300 --seeds 0 1 \\
        --variant "align=method.model.roi_pool_mode=align" --no-torchvision     # an ablation

Positional arguments are overrides of configs/train.yaml (as for tools/train.py). Every run trains
for ``--budget`` seconds and is tested by detkit's evaluator; see docs/results.md and
``detkit.analysis.benchmarking.compare_train``. Finished runs in ``--work`` are reused.
"""
from __future__ import annotations

import argparse
import json
import sys

from detkit.analysis.benchmarking.compare_train import TORCHVISION, TWIN_OVERRIDES, Side, compare_train, parse_variant, to_markdown


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="configs/train.yaml overrides shared by every run")
    p.add_argument("--budget", type=float, required=True, help="training seconds per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--work", required=True, help="folder of the run folders (finished runs are reused)")
    p.add_argument("--out", help="write the comparison as JSON here (a .md beside it gets the table)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES",
                   help="another detkit run with extra overrides (space-separated), repeatable")
    p.add_argument("--no-detkit", action="store_true", help="leave out detkit's run of the plain config")
    p.add_argument("--no-torchvision", action="store_true", help="leave out torchvision's twin")
    p.add_argument("--twin", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of torchvision's twin (a FasterRCNN keyword, anchor_sizes, ...), JSON value")
    a = p.parse_args(argv)
    try:
        twin = {k: json.loads(v) for k, _, v in (t.partition("=") for t in a.twin)}
        sides = ([] if a.no_detkit else [Side("detkit")]) + [parse_variant(v) for v in a.variant]
        if not a.no_torchvision:
            sides.append(Side(TORCHVISION, TWIN_OVERRIDES, twin=True, twin_settings=twin))
        result = compare_train(a.overrides, budget_s=a.budget, seeds=a.seeds, work=a.work, sides=sides)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = to_markdown(result)
    print("\n" + table)
    if a.out:
        from detkit.engine.evaluator import write_json
        write_json(a.out, result)
        with open(a.out.rsplit(".", 1)[0] + ".md", "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
