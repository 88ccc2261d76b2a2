"""detkit: the region-based CNN detector lineage as swappable PyTorch parts.

R-CNN, SPPNet, OverFeat, Fast R-CNN and Faster R-CNN on AlexNet, ZFNet, VGG-16, GoogLeNet and
ResNet-101, with Pascal VOC and COCO data and evaluation.
"""
import os

# albumentations checks PyPI for a newer version at import; our machines have no such network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
