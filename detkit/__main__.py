"""``python -m detkit <command> ...``: the ``detkit`` command."""
import sys

from detkit.cli import main

sys.exit(main())
