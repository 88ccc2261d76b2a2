"""``detkit export`` from a checkout: ``python tools/export.py --help`` (detkit/cli/export.py)."""
import sys

from detkit.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
