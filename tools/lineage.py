"""``detkit lineage`` from a checkout: ``python tools/lineage.py --help`` (detkit/cli/lineage.py)."""
import sys

from detkit.cli.lineage import main

if __name__ == "__main__":
    sys.exit(main())
