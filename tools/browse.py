"""``detkit browse`` from a checkout: ``python tools/browse.py --help`` (detkit/cli/browse.py)."""
import sys

from detkit.cli.browse import main

if __name__ == "__main__":
    sys.exit(main())
