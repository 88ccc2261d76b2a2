"""Folding batch norm into the convolution before it, for inference.

In eval mode a ``BatchNorm2d`` after a ``Conv2d`` is a per-channel affine map, so it can be
merged into the convolution's weights and bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``):
one pass over the feature map instead of two, the same outputs up to float rounding. detkit's
trunks are ``nn.Sequential`` chains (conv, norm, activation, ...), so every such pair is found by
walking them. Frozen batch norm (the ResNet default) is a buffer-only affine map that torch's
fusion does not know; it is left as it is.
"""
from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batch_norms(model: nn.Module) -> list[str]:
    """Fold every ``BatchNorm2d`` that directly follows a ``Conv2d`` in an ``nn.Sequential`` of
    ``model`` into that convolution (in place; the norm becomes ``nn.Identity``). Inference only:
    the model must be in eval mode.

    Returns:
        the names of the folded norms (``"backbone.trunk.1"``, ...).

    Raises:
        ValueError: the model is in training mode (batch statistics cannot be folded).
    """
    if model.training:
        raise ValueError(f"fold_batch_norms: {type(model).__name__} is in training mode; call .eval() first "
                         "(training normalises with each batch's statistics, which cannot be folded)")
    folded = []
    for name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if (isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats
                    and bn.num_features == conv.out_channels):
                setattr(seq, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(seq, bn_name, nn.Identity())
                folded.append(f"{name}.{bn_name}" if name else bn_name)
    return folded
