"""Measuring detectors: speed by phase, the torchvision twin, accuracy at equal training time."""
