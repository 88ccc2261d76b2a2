"""Print the per-layer summary of a backbone: shapes, parameters, multiply-adds, stride, RF.

    python tools/summary.py backbone=alexnet input_size=227
    python tools/summary.py backbone=vgg16 part=trunk input_size=[600,1000]
    python tools/summary.py backbone=googlenet part=backbone backbone.norm=bn backbone.width=0.5

Options: configs/summary.yaml; the backbone group and its layout: configs/backbone/*.yaml.
"""
from __future__ import annotations

import sys

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


from detkit.analysis.architecture.summary import Summary, format_table, summarize, to_markdown

PARTS = ("classifier", "trunk", "backbone")


def _build(node: dict):
    """Instantiate a builder node; without weights on the meta device (instant, shapes only)."""
    if node.get("weights") is None:
        try:
            with torch.device("meta"):
                return instantiate(node)
        except (NotImplementedError, RuntimeError):
            pass  # some builder step needs real tensors: build normally
    return instantiate(node)


def build_part(backbone_cfg: DictConfig, part: str):
    """``(module, default input side)`` for ``part`` of the configured backbone.

    The backbone node minus ``classifier`` builds the Backbone; ``classifier`` builds the whole
    classification network (layout: configs/backbone/*.yaml).
    """
    if part not in PARTS:
        raise ValueError(f"configs/summary.yaml: part must be one of {PARTS}, got {part!r}")
    node = OmegaConf.to_container(backbone_cfg, resolve=True)
    classifier = node.pop("classifier", None)
    backbone = _build(node)
    if part == "classifier":
        if classifier is None:
            raise ValueError("backbone config has no `classifier` node: cannot summarise part=classifier")
        return _build(classifier), backbone.input_size
    return (backbone.trunk if part == "trunk" else backbone), backbone.input_size


def run(cfg: DictConfig) -> tuple[Summary, str]:
    """The summary and its rendering for a composed summary config."""
    model, default_size = build_part(cfg.backbone, cfg.part)
    size = cfg.input_size if cfg.input_size is not None else default_size
    if OmegaConf.is_list(size):
        size = tuple(int(v) for v in size)
    summary = summarize(model, size, depth=cfg.depth)
    if cfg.format not in ("text", "markdown"):
        raise ValueError(f"configs/summary.yaml: format must be text or markdown, got {cfg.format!r}")
    return summary, format_table(summary) if cfg.format == "text" else to_markdown(summary)


@hydra.main(config_path="../configs", config_name="summary", version_base=None)
def hydra_app(cfg: DictConfig) -> None:
    _, text = run(cfg)
    sys.stdout.write(text)


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """``detkit summary OVERRIDES...`` / ``tools/summary.py OVERRIDES...``: Hydra's command line."""
    if argv is not None or prog is not None:
        sys.argv = [prog or sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    hydra_app()
    return 0


if __name__ == "__main__":
    sys.exit(main())
