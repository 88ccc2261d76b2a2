"""The README stays true: every command it shows exists with the options it shows, every config key it
names composes, and its Python example runs."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from detkit.cli import COMMANDS, HYDRA_COMMANDS
from detkit.engine.config import compose_run_config

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _detkit_lines() -> list[list[str]]:
    lines = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("detkit "):
                lines.append(shlex.split(line)[1:])
    return lines


def test_the_readme_shows_the_main_commands():
    shown = {args[0] for args in _detkit_lines()}
    assert {"train", "infer", "eval", "demo", "compare-train"} <= shown


@pytest.mark.parametrize("args", [a for a in _detkit_lines() if a and a[0] in COMMANDS and a[0] not in HYDRA_COMMANDS],
                         ids=lambda a: " ".join(a)[:60])
def test_argparse_commands_take_the_options_shown(args, capsys):
    from detkit.cli import main
    try:
        code = main([args[0], "--help"])
    except SystemExit as done:  # argparse's --help
        code = done.code
    assert code == 0
    help_text = capsys.readouterr().out
    for option in (a.split("=")[0] for a in args[1:] if a.startswith("--")):
        assert option in help_text, f"README's `detkit {' '.join(args)}`: {option} is not an option"


@pytest.mark.parametrize("args", [a for a in _detkit_lines() if a and a[0] == "train"], ids=lambda a: " ".join(a)[:60])
def test_train_lines_compose(args):
    overrides = [a for a in args[1:] if "=" in a]
    conf = compose_run_config(overrides)  # unknown groups, keys and values fail here
    assert conf["method"]["model"]["_target_"]


def test_summary_line_composes():
    from hydra import compose, initialize_config_dir

    from detkit.engine.config import CONFIG_DIR
    for args in (a for a in _detkit_lines() if a[0] == "summary"):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            compose("summary", overrides=args[1:])


def test_python_example_runs(tmp_path, monkeypatch, capsys):
    """The README's snippet, on a tiny checkpoint and image at the paths it names (the demo's)."""
    import numpy as np
    from PIL import Image

    from detkit.engine.checkpoint import atomic_torch_save, build_model, make_state

    (example,) = _blocks("python")
    monkeypatch.chdir(tmp_path)
    conf = compose_run_config(["backbone=alexnet", "backbone.width=0.125", "data.transforms.min_size=64",
                               "data.transforms.max_size=96", "method.model.anchor_sizes=[16,32,64]",
                               "method.model.box_score_thresh=0.0"])
    torch.manual_seed(0)
    atomic_torch_save(make_state(model=build_model(conf, 2), iteration=0, config=conf, class_names=["cat", "dog"]),
                      "outputs/demo/run/last.pt")
    image = Path("outputs/demo/data/JPEGImages/000010.jpg")
    image.parent.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(image)
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed and all(line.split()[0] in ("cat", "dog") for line in printed)
