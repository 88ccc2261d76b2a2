"""``detkit demo`` from a checkout: ``python tools/demo.py --help`` (detkit/cli/demo.py)."""
import sys

from detkit.cli.demo import main

if __name__ == "__main__":
    sys.exit(main())
