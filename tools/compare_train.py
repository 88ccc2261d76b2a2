"""``detkit compare-train`` from a checkout: ``python tools/compare_train.py --help`` (detkit/cli/compare_train.py)."""
import sys

from detkit.cli.compare_train import main

if __name__ == "__main__":
    sys.exit(main())
