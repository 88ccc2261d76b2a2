"""amp=auto: bf16 where the device has bf16 kernels and (on a CPU) a timing finds it faster."""
import pytest
import torch

from detkit.engine import precision
from detkit.engine.precision import auto_choice, autocast_context, native_bf16, resolve_amp, time_cpu_bf16


@pytest.fixture
def fake_cpu(monkeypatch):
    """A CPU whose bf16 flag and timing the test sets: ``fake_cpu(native, fp32_s, bf16_s)``."""
    calls = []

    def configure(native: bool, fp32_s: float = 1.0, bf16_s: float = 1.0):
        precision.cpu_bf16_speedup.cache_clear()
        monkeypatch.setattr(precision, "native_bf16", lambda device: native)

        def timing(**kwargs):
            calls.append(1)
            return fp32_s, bf16_s
        monkeypatch.setattr(precision, "time_cpu_bf16", timing)
        return calls

    yield configure
    precision.cpu_bf16_speedup.cache_clear()


def test_auto_on_the_cpu_follows_the_timing(fake_cpu):
    fake_cpu(True, fp32_s=1.0, bf16_s=0.55)  # bf16 1.8x faster (an AMD EPYC)
    assert resolve_amp("auto", torch.device("cpu")) == "bf16"
    assert "1.82x faster" in auto_choice(torch.device("cpu"))[1]
    fake_cpu(True, fp32_s=1.0, bf16_s=1.47)  # bf16 slower (an Intel Xeon without AMX)
    assert resolve_amp("auto", torch.device("cpu")) == "none"
    assert "1.47x slower" in auto_choice(torch.device("cpu"))[1]
    fake_cpu(True, fp32_s=1.0, bf16_s=0.95)  # a 5 % gain does not pay for bf16's rounding
    assert resolve_amp("auto", torch.device("cpu")) == "none"
    with autocast_context(torch.device("cpu"), "auto"):
        assert not torch.is_autocast_enabled("cpu")


def test_no_bf16_kernels_means_float32_without_timing(fake_cpu):
    calls = fake_cpu(False, fp32_s=1.0, bf16_s=0.1)
    assert resolve_amp("auto", torch.device("cpu")) == "none"
    assert calls == []


def test_the_timing_runs_once_per_thread_count(fake_cpu):
    calls = fake_cpu(True, fp32_s=1.0, bf16_s=0.5)
    for _ in range(3):
        resolve_amp("auto", torch.device("cpu"))
    assert len(calls) == 1


def test_explicit_choices_stay_and_bad_ones_are_named(fake_cpu):
    calls = fake_cpu(True)
    for amp in ("none", "bf16", "fp16"):
        assert resolve_amp(amp, torch.device("cpu")) == amp
    assert calls == []
    with pytest.raises(ValueError, match="'auto', got 'fp8'"):
        resolve_amp("fp8", torch.device("cpu"))


def test_the_timing_measures_both_and_keeps_the_seeds():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fp32_s, bf16_s = time_cpu_bf16(repeats=1)
    assert fp32_s > 0 and bf16_s > 0
    assert torch.equal(torch.rand(3), expected)  # the run's random stream is untouched
    with torch.no_grad():  # callers may be inside no_grad or inference_mode
        assert min(time_cpu_bf16(repeats=1)) > 0


def test_native_bf16_answers_on_this_machine():
    assert isinstance(native_bf16(torch.device("cpu")), bool)
