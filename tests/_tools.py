"""The command modules (``detkit.cli.<name>``, which ``detkit <name>`` and ``tools/<name>.py`` run),
imported afresh so a test can call their functions in-process (a subprocess pays seconds of torch
import) and patch them without touching other tests."""
from __future__ import annotations

import importlib
import sys
from types import ModuleType


def load_tool(name: str) -> ModuleType:
    """``detkit.cli.<name>`` as a fresh module object."""
    module_name = f"detkit.cli.{name}"
    sys.modules.pop(module_name, None)
    return importlib.import_module(module_name)
