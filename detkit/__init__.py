"""detkit: the region-based CNN detector lineage as swappable PyTorch parts.

R-CNN, SPPNet, OverFeat, Fast R-CNN and Faster R-CNN on AlexNet, ZFNet, VGG-16, GoogLeNet and
ResNet-101, with Pascal VOC and COCO data and evaluation.

    import detkit
    predictor = detkit.load("outputs/run/last.pt")     # any method's checkpoint
    dets = predictor("image.jpg")                     # boxes in the image's pixels, scores, labels, names
    model = detkit.build("faster_rcnn", "vgg16", num_classes=3)   # an untrained detector
"""
import os

# albumentations checks PyPI for a newer version at import; our machines have no such network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
__all__ = ["Detections", "Predictor", "build", "load", "__version__"]

_LAZY = {"Detections": "detkit.predictor", "Predictor": "detkit.predictor", "load": "detkit.predictor",
         "build": "detkit.builder"}


def __getattr__(name: str):
    # `import detkit` stays light (no torch import) until the API is used.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'detkit' has no attribute {name!r}")
