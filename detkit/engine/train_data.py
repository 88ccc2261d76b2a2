"""The training data stream: seeded samples, and one loader whose workers live across epochs.

Data order: epoch ``e``'s batches are a function of ``(seed, e)`` (``build_batch_sampler``); each
sample's augmentation is seeded from ``(seed, epoch, index)`` (``sample_seed``), so neither depends
on which worker loads it or on where a run was interrupted (``detkit.engine.trainer``).
"""
from __future__ import annotations

import random
import warnings

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["sample_seed", "SeededSamples", "KeyedBatches"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation, a function of ``(seed, epoch, index)`` only."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class SeededSamples(Dataset):
    """Wraps a dataset so that ``ds[(index, seed)]`` is ``dataset[index]`` drawn with that seed.

    Global RNGs are restored afterwards: loading in the main process never disturbs the model's
    random stream. The transforms' own albumentations generators are reseeded through
    ``set_random_seed`` when the dataset's ``transforms`` (or its ``.compose``) has it.

    Lenient training: a sample whose image turns out unreadable only now (``DataError``: truncated,
    corrupt, not an image, size differs from its record) is replaced by the next readable sample,
    with one ``DataWarning`` naming the file (docs/reliability.md); the choice is deterministic, so
    exact resume still holds. ``check_images=true`` at load time finds such files up front.
    """

    def __init__(self, dataset):
        self.dataset = dataset
        t = getattr(dataset, "transforms", None)  # DetectionTransform first: it knows about workers
        self._reseed = getattr(t, "set_random_seed", None) or getattr(getattr(t, "compose", None),
                                                                      "set_random_seed", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        py, npst = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            if self._reseed is not None:
                self._reseed(seed % 2**32)
            try:
                return self._first_readable(index)
            finally:
                random.setstate(py)
                np.random.set_state(npst)

    def _first_readable(self, index: int):
        from detkit.data.problems import DataError, DataWarning

        n = len(self.dataset)
        for step in range(n):
            try:
                return self.dataset[(index + step) % n]
            except DataError as e:
                err = e
                warnings.warn(f"{e}; training on the next readable sample in its place", DataWarning, stacklevel=2)
        raise DataError(f"none of the {n} training images can be read (last: {err})")


class KeyedBatches:
    """A batch sampler over a schedule of ``(epoch, position, indices)`` batches (``DataLoader``
    iterates it once): each index is keyed with its sample seed ``sample_seed(seed, epoch, index)``."""

    def __init__(self, schedule, seed: int):
        self.schedule, self.seed = schedule, int(seed)

    def __iter__(self):
        for epoch, _, indices in self.schedule:
            yield [(i, sample_seed(self.seed, epoch, i)) for i in indices]
