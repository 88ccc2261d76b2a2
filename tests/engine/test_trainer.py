"""The training loop with a tiny real model on a tiny generated VOC set (CPU, deterministic)."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detkit.data.dataset import DetectionDataset
from detkit.data.synthetic import make_synthetic_voc
from detkit.data.transforms import build_transforms
from detkit.data.voc import load_voc
from detkit.engine.checkpoint import load_checkpoint
from detkit.engine.trainer import NonFiniteLossError, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from tiny_detector import TinyDetector  # noqa: E402


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = make_synthetic_voc(tmp_path_factory.mktemp("syn") / "voc", num_images=14, image_size=(64, 96),
                              object_size=(16, 40), seed=1)
    return load_voc(root, "trainval")


class CountingDataset(DetectionDataset):
    """Counts image loads (to prove a resumed run does not load the skipped batches)."""

    loads = 0

    def __getitem__(self, index):
        type(self).loads += 1
        return super().__getitem__(index)


def _trainer(voc, run_dir, *, seed=0, trainer_cls=Trainer, model=None, **kw):
    torch.manual_seed(seed)  # model init; resumed runs start from a *different* init on purpose
    ds = CountingDataset(voc, build_transforms(train=True, min_size=(56, 64), max_size=96))
    args = dict(batch_size=2, lr=0.05, warmup_iters=2, schedule="step", milestones=[5], device="cpu",
                seed=0, progress=False, tensorboard=False, size_divisible=16)
    args.update(kw)
    return trainer_cls(model=model or TinyDetector(num_classes=voc.num_classes), train_dataset=ds,
                       run_dir=run_dir, class_names=voc.class_names, **args)


def _params(t):
    return {k: v.clone() for k, v in t.net.state_dict().items()}


def test_loss_falls(voc, tmp_path):
    # 4 fixed images without augmentation: the tiny model must fit them.
    from detkit.data.record import DetectionData

    torch.manual_seed(0)
    small = DetectionData(voc.records[:4], voc.class_names)
    ds = DetectionDataset(small, build_transforms(train=False, min_size=64, max_size=96))
    t = Trainer(model=TinyDetector(num_classes=voc.num_classes), train_dataset=ds, run_dir=tmp_path, max_iters=30,
                lr=0.1, warmup_iters=2, device="cpu", progress=False, tensorboard=True, size_divisible=16)
    t.fit()
    losses = [h["loss"] for h in t.history]
    assert len(losses) == 30
    assert np.mean(losses[-6:]) < 0.75 * np.mean(losses[:6])
    assert (tmp_path / "last.pt").is_file() and any((tmp_path / "tb").iterdir())
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 30


class SimulatedCrash(Exception):
    pass


def test_resume_is_exact(voc, tmp_path):
    # 14 images -> trainval ~11 -> ~6 batches/epoch: 9 iterations cross an epoch boundary.
    n, crash_at = 9, 5
    ref = _trainer(voc, tmp_path / "ref", max_iters=n, checkpoint_every=3)
    CountingDataset.loads = 0
    ref.fit()
    loads_full = CountingDataset.loads
    expected = _params(ref)

    class Crashing(Trainer):
        def _step(self, batch, targets):
            if self.iteration == crash_at:  # dies after step 5; last checkpoint is from step 3
                raise SimulatedCrash
            return super()._step(batch, targets)

    with pytest.raises(SimulatedCrash):
        _trainer(voc, tmp_path / "run", max_iters=n, checkpoint_every=3, trainer_cls=Crashing).fit()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 3

    resumed = _trainer(voc, tmp_path / "run", seed=123, max_iters=n, checkpoint_every=3)
    first3 = sum(len(b) for b in resumed._epoch_batches(0)[:3])
    CountingDataset.loads = 0
    out = resumed.fit(resume=True)
    assert out["iteration"] == n
    # the three consumed batches are skipped without reading their images
    assert CountingDataset.loads == loads_full - first3
    got = _params(resumed)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in ref.history[3:]]


def test_one_loader_serves_every_epoch_and_workers_change_nothing(voc, tmp_path, monkeypatch):
    """The workers live across epochs (one DataLoader per fit), and loading in a worker process
    gives exactly the losses of loading in the main process (samples are seeded by key)."""
    import detkit.engine.trainer as trainer_module

    made, real = [], trainer_module.DataLoader

    def counting(*args, **kwargs):
        made.append(kwargs.get("num_workers"))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "DataLoader", counting)
    inline = _trainer(voc, tmp_path / "inline", max_iters=9)  # ~6 batches/epoch: crosses an epoch
    inline.fit()
    worker = _trainer(voc, tmp_path / "worker", max_iters=9, num_workers=1)
    worker.fit()
    assert made == [0, 1] and worker.epoch == inline.epoch >= 1
    assert [h["loss"] for h in worker.history] == [h["loss"] for h in inline.history]


def test_resume_is_exact_with_loader_workers(voc, tmp_path):
    """A worker process loads the samples (and the resumed loader starts mid-epoch): the resumed
    run still ends bit-identical to the uninterrupted one."""
    n, crash_at = 9, 5
    ref = _trainer(voc, tmp_path / "ref", max_iters=n, checkpoint_every=3, num_workers=1)
    ref.fit()

    class Crashing(Trainer):
        def _step(self, batch, targets):
            if self.iteration == crash_at:
                raise SimulatedCrash
            return super()._step(batch, targets)

    with pytest.raises(SimulatedCrash):
        _trainer(voc, tmp_path / "run", max_iters=n, checkpoint_every=3, num_workers=1, trainer_cls=Crashing).fit()
    resumed = _trainer(voc, tmp_path / "run", seed=123, max_iters=n, checkpoint_every=3, num_workers=1)
    resumed.fit(resume=True)
    got, expected = _params(resumed), _params(ref)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in ref.history[3:]]


class PoisonedTiny(TinyDetector):
    """Returns a NaN loss on its ``bad_call``-th training forward pass."""

    def __init__(self, bad_call, **kw):
        super().__init__(**kw)
        self.calls, self.bad_call = 0, bad_call

    def forward(self, batch, targets=None):
        out = super().forward(batch, targets)
        if self.training:
            self.calls += 1
            if self.calls == self.bad_call:
                out["loss_box"] = out["loss_box"] * float("nan")
        return out


def test_nonfinite_loss_stops_and_keeps_last_good(voc, tmp_path):
    model = PoisonedTiny(4, num_classes=voc.num_classes)
    t = _trainer(voc, tmp_path, max_iters=6, checkpoint_every=2, model=model)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at iteration 4 .*loss_box=nan.*last\.pt"):
        t.fit()
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    # the model in memory was not stepped with the bad gradients either
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nonfinite_loss_skipped_when_configured(voc, tmp_path):
    model = PoisonedTiny(2, num_classes=voc.num_classes)
    t = _trainer(voc, tmp_path, max_iters=4, model=model, skip_nonfinite=True)
    out = t.fit()
    assert out["skipped_steps"] == 1 and out["iteration"] == 4 and len(t.history) == 3
    assert all(torch.isfinite(v).all() for v in load_checkpoint(tmp_path / "last.pt")["model"].values())


def test_predict_maps_to_original_coords(voc, tmp_path):
    from detkit.engine.evaluator import predict, score_detections

    ds = DetectionDataset(voc, build_transforms(train=False, min_size=128, max_size=256))
    model = TinyDetector(num_classes=voc.num_classes).eval()
    dets = predict(model, ds, batch_size=1, progress=False)  # same padding as the check below
    assert set(dets) == {r.image_id for r in voc.records}
    for rec in voc.records:
        img, tgt = ds[voc.records.index(rec)]
        from detkit.data.batch import ImageBatch
        raw = model(ImageBatch.from_images([img]))[0]["boxes"][0].detach()
        h, w = tgt["size"]
        scale = torch.tensor([rec.width / w, rec.height / h] * 2)
        assert np.allclose(dets[rec.image_id]["boxes"][0], (raw * scale).numpy(), atol=1e-3)
    scores = score_detections(dets, voc, coco=True)
    assert 0.0 <= scores["voc07"]["mAP"] <= 1.0 and "coco" in scores


class FakeClock:
    """``time.perf_counter`` stand-in: advances only when told (one training step = 1 s)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _timed_trainer(voc, run_dir, clock, monkeypatch, **kw):
    import detkit.engine.trainer as trainer_mod

    monkeypatch.setattr(trainer_mod.time, "perf_counter", clock)

    class Timed(Trainer):
        def _step(self, batch, targets):
            clock.now += 1.0  # each optimiser step takes one (fake) second
            return super()._step(batch, targets)

        def save(self):
            clock.now += 100.0  # checkpoint writes are slow but must not count as training
            return super().save()

    return _trainer(voc, run_dir, trainer_cls=Timed, **kw)


def test_max_time_s_stops_early_and_resume_keeps_the_time(voc, tmp_path, monkeypatch):
    clock = FakeClock()
    t = _timed_trainer(voc, tmp_path, clock, monkeypatch, max_iters=50, checkpoint_every=1, max_time_s=2.5)
    out = t.fit()
    # 1 s per step: after step 3 the 2.5 s budget is spent; the 100 s checkpoint writes are excluded
    assert out["iteration"] == 3 and out["stopped_by"] == "max_time_s"
    assert out["train_seconds"] == pytest.approx(3.0)
    assert out["train_images_per_second"] == pytest.approx(3 * 2 / 3.0)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["iteration"] == 3 and ckpt["position"] == 3 and ckpt["scheduler"]["last_epoch"] == 3
    assert ckpt["timing"] == {"train_seconds": pytest.approx(3.0), "stopped_by": "max_time_s"}
    # a larger budget continues from the saved 3 s: steps 4 and 5 (5 s >= 4.5 s)
    t2 = _timed_trainer(voc, tmp_path, clock, monkeypatch, max_iters=50, checkpoint_every=1, max_time_s=4.5)
    out2 = t2.fit(resume=True)
    assert out2["iteration"] == 5 and out2["train_seconds"] == pytest.approx(5.0)
    assert out2["stopped_by"] == "max_time_s" and len(t2.history) == 2
    # the same spent budget again: nothing more to train
    t3 = _timed_trainer(voc, tmp_path, clock, monkeypatch, max_iters=50, max_time_s=4.5)
    assert t3.fit(resume=True)["iteration"] == 5 and not t3.history


def test_max_iters_reached_within_budget(voc, tmp_path, monkeypatch):
    clock = FakeClock()
    t = _timed_trainer(voc, tmp_path, clock, monkeypatch, max_iters=2, max_time_s=60)
    out = t.fit()
    assert out["iteration"] == 2 and out["stopped_by"] == "max_iters" and out["train_seconds"] == pytest.approx(2.0)
    assert load_checkpoint(tmp_path / "last.pt")["timing"]["stopped_by"] == "max_iters"
    with pytest.raises(ValueError, match="max_time_s"):
        _trainer(voc, tmp_path / "bad", max_iters=2, max_time_s=0)


def test_timed_predict_counts_images_and_model_time(voc):
    from detkit.engine.evaluator import timed_predict

    ds = DetectionDataset(voc, build_transforms(train=False, min_size=64, max_size=96))
    dets, timing = timed_predict(TinyDetector(num_classes=voc.num_classes).eval(), ds, batch_size=3, progress=False)
    assert len(dets) == len(ds) == timing["images"]
    assert 0 < timing["model_seconds"] <= timing["seconds"]
    assert timing["seconds_per_image"] == pytest.approx(timing["seconds"] / len(ds))


@pytest.mark.parametrize("clock_kind", ["iterations", "time"])
def test_schedule_clock_time_finishes_the_cosine_within_the_budget(voc, tmp_path, monkeypatch, clock_kind):
    """schedule_clock='time': 1 s per step, a 5 s budget, max_iters 100 -> the cosine runs on
    max(iteration, seconds / 5 s * 100), so each step's LR is the cosine at 20 % more of it and
    the last is 0; on the iteration clock the LR after 5 of 100 steps has barely moved."""
    import math

    clock = FakeClock()
    t = _timed_trainer(voc, tmp_path / clock_kind, clock, monkeypatch, max_iters=100, max_time_s=5.0,
                       schedule="cosine", warmup_iters=0, lr=0.05, schedule_clock=clock_kind)
    lrs = []  # the LR each step's forward pass runs with
    t.net.register_forward_pre_hook(lambda *_: lrs.append(t.optimizer.param_groups[0]["lr"]))
    out = t.fit()
    assert out["iteration"] == 5 and out["stopped_by"] == "max_time_s"

    def cosine(frac):
        return 0.05 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))

    fracs = [k / 5 for k in range(6)] if clock_kind == "time" else [k / 100 for k in range(6)]
    assert [*lrs, t.optimizer.param_groups[0]["lr"]] == pytest.approx([cosine(f) for f in fracs], abs=1e-9)
    state = load_checkpoint(tmp_path / clock_kind / "last.pt")["scheduler"]["lr_lambdas"][0]
    assert state["clock"] == clock_kind
    assert state["time_fraction"] == (pytest.approx(1.0) if clock_kind == "time" else 0.0)


def test_schedule_clock_time_needs_a_budget(voc, tmp_path):
    with pytest.raises(ValueError, match="set max_time_s"):
        _trainer(voc, tmp_path, max_iters=10, schedule_clock="time")


def test_progress_is_logged_as_lines_with_losses_and_eta(voc, tmp_path, monkeypatch, caplog):
    """Every log_every steps one line goes to the ``detkit.train`` logger (train.log, and the console
    when the bar is off): the iteration, the loss and its terms, the LR and the ETA. 1 fake second
    per step and a 10 s budget: after step 2 the ETA is the budget's 8 s, before max_iters' 48 s."""
    import logging

    clock = FakeClock()
    t = _timed_trainer(voc, tmp_path, clock, monkeypatch, max_iters=50, max_time_s=10.0, log_every=2)
    with caplog.at_level(logging.INFO, logger="detkit.train"):
        out = t.fit()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("iter ")]
    assert out["iteration"] == 10
    assert [line.split()[1] for line in lines] == ["1/50", "2/50", "4/50", "6/50", "8/50", "10/50"]
    terms = [k for k in t.history[1] if k != "loss"]
    assert terms and all(f"{k} " in lines[1] for k in terms)
    assert f"loss {t.history[1]['loss']:.3f}" in lines[1]
    assert lines[1].endswith("eta 00:00:08") and lines[-1].endswith("eta 00:00:00")


def test_resume_keeps_this_machines_sgd_kernel_and_buffer_layout(voc, tmp_path):
    # A checkpoint written before the trainer used fused SGD stores fused=None, and momentum buffers
    # keep the layout they were saved in; the fused kernel walks buffer and parameter memory in step.
    _trainer(voc, tmp_path / "run", max_iters=2, checkpoint_every=2).fit()
    last = tmp_path / "run" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    for group in ckpt["optimizer"]["param_groups"]:
        group["fused"] = None
    moved = 0
    for state in ckpt["optimizer"]["state"].values():
        buf = state["momentum_buffer"]
        if buf.dim() == 4 and buf.shape[1] > 1 and buf.shape[2] > 1:
            state["momentum_buffer"] = buf.contiguous(memory_format=torch.channels_last)
            moved += 1
    assert moved > 0
    torch.save(ckpt, last)
    resumed = _trainer(voc, tmp_path / "run", max_iters=4, checkpoint_every=2)
    resumed.load(last)
    assert all(g["fused"] for g in resumed.optimizer.param_groups)
    saved = {i: s["momentum_buffer"] for i, s in ckpt["optimizer"]["state"].items()}
    params = [p for g in resumed.optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        buf = resumed.optimizer.state[p]["momentum_buffer"]
        assert buf.stride() == p.stride() and torch.equal(buf, saved[i])
    assert resumed.fit(resume=True)["iteration"] == 4


@pytest.mark.parametrize("bf16_s, expected", [(0.5, "bf16"), (1.5, "none")])
def test_amp_auto_follows_this_cpus_timing_and_logs_why(voc, tmp_path, monkeypatch, caplog, bf16_s, expected):
    """A CPU with bf16 kernels: ``amp="auto"`` trains in bf16 only where the timing found it faster."""
    import logging

    from detkit.engine import precision

    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    monkeypatch.setattr(precision, "time_cpu_bf16", lambda **kw: (1.0, bf16_s))
    precision.cpu_bf16_speedup.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="detkit.train"):
            t = _trainer(voc, tmp_path, max_iters=1, amp="auto")
    finally:
        precision.cpu_bf16_speedup.cache_clear()
    assert t.amp == expected
    said = "bf16 (bf16 measured 2.00x faster" if expected == "bf16" else "float32 (bf16 measured 1.50x slower"
    assert any(f"amp=auto -> {said}" in r.getMessage() for r in caplog.records)


def test_amp_auto_resumes_in_the_precision_the_run_started_in(voc, tmp_path, monkeypatch):
    """``amp="auto"`` is timed in each process; a resumed run must not switch precision midway."""
    from detkit.engine import precision

    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    monkeypatch.setattr(precision, "time_cpu_bf16", lambda **kw: (1.0, 0.5))  # the first process: bf16 faster
    precision.cpu_bf16_speedup.cache_clear()
    first = _trainer(voc, tmp_path, max_iters=4, amp="auto", checkpoint_every=2)
    first.fit()
    assert first.amp == "bf16" and load_checkpoint(tmp_path / "last.pt")["amp"] == "bf16"
    monkeypatch.setattr(precision, "time_cpu_bf16", lambda **kw: (1.0, 2.0))  # the second: slower
    precision.cpu_bf16_speedup.cache_clear()
    again = _trainer(voc, tmp_path, max_iters=6, amp="auto")
    precision.cpu_bf16_speedup.cache_clear()
    assert again.amp == "none"  # what this process alone would choose
    again.fit(resume=True)
    assert again.iteration == 6 and again.amp == "bf16"
    explicit = _trainer(voc, tmp_path / "x", max_iters=6, amp="none")
    explicit.load(tmp_path / "last.pt")
    assert explicit.amp == "none"  # an explicit choice is kept
