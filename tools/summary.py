"""``detkit summary`` from a checkout: ``python tools/summary.py --help`` (detkit/cli/summary.py)."""
import sys

from detkit.cli.summary import main

if __name__ == "__main__":
    sys.exit(main())
