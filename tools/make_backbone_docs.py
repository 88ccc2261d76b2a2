"""Regenerate docs/backbones.md from the backbone configs: ``python tools/make_backbone_docs.py``
(detkit/cli/make_backbone_docs.py)."""
import sys

from detkit.cli.make_backbone_docs import main

if __name__ == "__main__":
    sys.exit(main())
