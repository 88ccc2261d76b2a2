"""``detkit proposals`` from a checkout: ``python tools/proposals.py --help`` (detkit/cli/proposals.py)."""
import sys

from detkit.cli.proposals import main

if __name__ == "__main__":
    sys.exit(main())
