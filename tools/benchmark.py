"""``detkit benchmark`` from a checkout: ``python tools/benchmark.py --help`` (detkit/cli/benchmark.py)."""
import sys

from detkit.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
