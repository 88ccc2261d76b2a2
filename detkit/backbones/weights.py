"""Loading ImageNet weights in torchvision's state-dict layout.

Two sources, one format:

* a **local file** — anything ``torch.save(model.state_dict(), path)`` wrote for the matching
  torchvision network (e.g. a ``vgg16-397923af.pth`` downloaded on another machine);
* a **torchvision weights enum name** such as ``"IMAGENET1K_V1"`` or ``"DEFAULT"`` — downloaded
  through ``torch.hub`` (or found in its cache), so it needs the internet.

Keys are checked before anything is copied: missing, unexpected and shape-mismatched keys are
listed (the first 10 of each) together with the file name, so a VGG file handed to a ResNet
fails with a message, not a stack of size-mismatch lines.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["WeightsFileError", "WeightsMismatchError", "WeightsUnavailableError", "LoadReport",
           "read_state_dict", "load_state_dict", "load_state_dict_file", "resolve_weights",
           "build_with_weights"]

_SHOW = 10  # keys listed per category in error messages
_ENUM_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


class WeightsFileError(OSError):
    """A weights file is missing, unreadable, corrupt, or does not hold a state dict."""


class WeightsMismatchError(ValueError):
    """A state dict's keys or shapes do not fit the model."""


class WeightsUnavailableError(OSError):
    """Named torchvision weights could not be fetched (no internet) or do not exist."""


@dataclass
class LoadReport:
    """What ``load_state_dict`` found: keys the model lacks in the file and vice versa."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: file (..) vs model (..)"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def _first(keys: list[str]) -> str:
    more = f" ... and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict saved with ``torch.save`` (safely: ``weights_only=True``).

    A checkpoint dict wrapping the weights under ``"state_dict"`` or ``"model"`` is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"weights file {str(path)!r} does not exist")
    try:
        try:  # memory-mapped: a 500 MB VGG file is not read twice
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # legacy (non-zip) torch.save files cannot be mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip/EOF errors all mean the same thing to the user
        raise WeightsFileError(
            f"weights file {str(path)!r} is corrupt or not a torch.save file "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise WeightsFileError(
            f"weights file {str(path)!r} does not hold a state dict (str -> Tensor), "
            f"found {type(obj).__name__}"
        )
    return obj


def _remap(state: dict[str, Tensor], prefix_map: dict[str, str | None] | None) -> dict:
    """Rename keys starting with a ``prefix_map`` key to the mapped prefix (None drops them)."""
    if not prefix_map:
        return dict(state)
    out = {}
    for key, value in state.items():
        for old, new in prefix_map.items():
            if key.startswith(old):
                if new is None:
                    break
                out[new + key[len(old):]] = value
                break
        else:
            out[key] = value
    return out


def load_state_dict(model: nn.Module, state: dict[str, Tensor], *, source: str,
                    strict: bool = True) -> LoadReport:
    """Copy ``state`` into ``model`` after checking keys and shapes.

    ``num_batches_tracked`` counters are ignored both ways (frozen batch norms have none).
    With ``strict`` any problem raises :class:`WeightsMismatchError` naming ``source``; without
    it, the matching tensors are loaded and the report says what was skipped.
    """
    own = model.state_dict()
    skip = "num_batches_tracked"
    report = LoadReport(
        missing=[k for k in own if k not in state and not k.endswith(skip)],
        unexpected=[k for k in state if k not in own and not k.endswith(skip)],
        mismatched=[f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                    for k, v in state.items() if k in own and v.shape != own[k].shape],
    )
    if strict and not report.ok:
        lines = [f"weights from {source} do not fit {type(model).__name__}:"]
        for label, keys in (("missing", report.missing), ("unexpected", report.unexpected),
                            ("shape mismatch", report.mismatched)):
            if keys:
                lines.append(f"  {len(keys)} {label}: {_first(keys)}")
        raise WeightsMismatchError("\n".join(lines))
    usable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(usable, strict=False)
    return report


def load_state_dict_file(model: nn.Module, path: str | os.PathLike, *,
                         prefix_map: dict[str, str | None] | None = None,
                         strict: bool = True) -> LoadReport:
    """Load a torchvision-layout state-dict file into ``model`` (see :func:`load_state_dict`).

    ``prefix_map`` renames file keys first, e.g. ``{"backbone.": ""}``; mapping to ``None``
    drops keys with that prefix (e.g. ``{"fc.": None}`` with ``strict=False``).
    """
    state = _remap(read_state_dict(path), prefix_map)
    return load_state_dict(model, state, source=f"file {str(path)!r}", strict=strict)


def resolve_weights(name_or_path: str | os.PathLike,
                    torchvision_builder_name: str | None) -> tuple[dict[str, Tensor], str]:
    """Turn ``weights=`` into ``(state_dict, description)``.

    An existing path is read as a file. Otherwise an upper-case name is looked up in the
    weights enum of ``torchvision.models.<torchvision_builder_name>`` and downloaded
    (``None`` = this network has no torchvision weights: only files are accepted).
    """
    text = os.fspath(name_or_path)
    if os.path.exists(text):
        return read_state_dict(text), f"file {text!r}"
    if not _ENUM_NAME.fullmatch(text):
        raise WeightsFileError(f"weights file {text!r} does not exist")
    if torchvision_builder_name is None:
        raise WeightsUnavailableError(
            f"weights={text!r}: torchvision has no weights for this network; pass the path of "
            "a state-dict file in its layout instead")
    import torchvision.models as tvm

    enum = tvm.get_model_weights(torchvision_builder_name)
    try:
        entry = enum[text]
    except KeyError:
        names = [w.name for w in enum] + ["DEFAULT"]
        raise WeightsUnavailableError(
            f"torchvision has no weights {text!r} for {torchvision_builder_name}; "
            f"known names: {names}") from None
    try:
        state = entry.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, socket/SSL errors, hash mismatch: all "can't fetch"
        raise WeightsUnavailableError(
            f"could not download torchvision weights {torchvision_builder_name}.{entry.name} "
            f"({type(exc).__name__}: {exc}). Without internet access, download {entry.url} on "
            "another machine and pass the file's local path as weights=...") from exc
    return state, f"torchvision {torchvision_builder_name}.{entry.name}"


def build_with_weights(factory: Callable[[], nn.Module], weights: str | os.PathLike | None,
                       torchvision_builder_name: str | None) -> nn.Module:
    """``factory()``, with ``weights`` loaded strictly when given.

    With weights the network is built on the ``meta`` device and materialised uninitialised:
    the strict load overwrites every parameter and buffer, so the random initialisation of a
    138 M-parameter VGG would be wasted work. The weights are resolved first, so a bad path
    fails before anything is built.
    """
    if weights is None:
        return factory()
    state, source = resolve_weights(weights, torchvision_builder_name)
    with torch.device("meta"):
        model = factory()
    model.to_empty(device="cpu")
    for name, buf in model.named_buffers():
        if name.endswith("num_batches_tracked"):  # not required from the file
            buf.zero_()
    load_state_dict(model, state, source=source, strict=True)
    return model
