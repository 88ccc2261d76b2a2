"""``detkit compare-merges`` from a checkout: ``python tools/compare_merges.py --help`` (detkit/cli/compare_merges.py)."""
import sys

from detkit.cli.compare_merges import main

if __name__ == "__main__":
    sys.exit(main())
