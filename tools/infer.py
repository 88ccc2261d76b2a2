"""``detkit infer`` from a checkout: ``python tools/infer.py --help`` (detkit/cli/infer.py)."""
import sys

from detkit.cli.infer import main

if __name__ == "__main__":
    sys.exit(main())
