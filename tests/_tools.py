"""Import a script of ``tools/`` as a module, to call its functions in-process (a subprocess
pays seconds of torch import)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` loaded as a fresh module."""
    spec = importlib.util.spec_from_file_location(f"detkit_tool_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
