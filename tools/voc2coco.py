"""``detkit voc2coco`` from a checkout: ``python tools/voc2coco.py --help`` (detkit/cli/voc2coco.py)."""
import sys

from detkit.cli.voc2coco import main

if __name__ == "__main__":
    sys.exit(main())
