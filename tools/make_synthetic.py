"""``detkit make-synthetic`` from a checkout: ``python tools/make_synthetic.py --help`` (detkit/cli/make_synthetic.py)."""
import sys

from detkit.cli.make_synthetic import main

if __name__ == "__main__":
    sys.exit(main())
