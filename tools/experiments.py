"""``detkit experiments`` from a checkout: ``python tools/experiments.py --help`` (detkit/cli/experiments.py)."""
import sys

from detkit.cli.experiments import main

if __name__ == "__main__":
    sys.exit(main())
