"""Backbones: AlexNet, ZFNet, VGG-16, GoogLeNet, ResNet-101, each split into trunk + region head."""
