"""The model side of ``--fast`` (``detkit.load(fast=True)``, ``detkit benchmark --fast``): batch norm
folded into the convolutions (inference only) and ``channels_last``. The precision half (bf16
where native) is the caller's autocast setting."""
from __future__ import annotations

import torch
from torch import nn

from detkit.compression.fold import fold_batch_norms


def make_fast(model: nn.Module, *, fold: bool = True) -> list[str]:
    """Prepare a detector in place for fast CPU/GPU inference: with ``fold``, fold its batch norms
    (the model is put in eval mode); then ``channels_last`` for the weights and, through the
    detector's ``channels_last`` flag, for every input (``Detector.preprocess``).

    Returns:
        the names of the folded norms.
    """
    folded = fold_batch_norms(model.eval()) if fold else []
    model.channels_last = True
    model.to(memory_format=torch.channels_last)
    return folded
