"""``detkit svm-solvers`` from a checkout: ``python tools/svm_solvers.py --help`` (detkit/cli/svm_solvers.py)."""
import sys

from detkit.cli.svm_solvers import cli

if __name__ == "__main__":
    sys.exit(cli())
