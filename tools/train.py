"""``detkit train`` from a checkout: ``python tools/train.py --help`` (detkit/cli/train.py)."""
import sys

from detkit.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
