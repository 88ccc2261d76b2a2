"""amp=auto: bf16 where the device computes it natively, fp32 elsewhere."""
import pytest
import torch

from detkit.engine import evaluator
from detkit.engine.evaluator import autocast_context, native_bf16, resolve_amp


def test_auto_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(evaluator, "native_bf16", lambda device: True)
    assert resolve_amp("auto", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(evaluator, "native_bf16", lambda device: False)
    assert resolve_amp("auto", torch.device("cpu")) == "none"
    with autocast_context(torch.device("cpu"), "auto"):
        assert not torch.is_autocast_enabled("cpu")


def test_explicit_choices_stay_and_bad_ones_are_named():
    for amp in ("none", "bf16", "fp16"):
        assert resolve_amp(amp, torch.device("cpu")) == amp
    with pytest.raises(ValueError, match="'auto', got 'fp8'"):
        resolve_amp("fp8", torch.device("cpu"))


def test_native_bf16_answers_on_this_machine():
    assert isinstance(native_bf16(torch.device("cpu")), bool)
