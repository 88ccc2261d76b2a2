"""``detkit eval`` from a checkout: ``python tools/eval.py --help`` (detkit/cli/eval.py)."""
import sys

from detkit.cli.eval import main

if __name__ == "__main__":
    sys.exit(main())
