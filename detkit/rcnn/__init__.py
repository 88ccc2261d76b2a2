"""R-CNN's own parts (Girshick et al. 2014): warped regions, per-class linear SVMs with
hard-negative mining, and class-specific bounding-box regression. SPPNet's pyramid pooling lives
in ``detkit.roi_heads.spp``; selective search in ``detkit.proposals``."""
from detkit.rcnn.bbox_regression import BoxRegressors, fit_box_regressors
from detkit.rcnn.svm import LinearSVM, feature_scale, train_class_svms, train_svm
from detkit.rcnn.warp import dilate_boxes, warp_regions

__all__ = ["BoxRegressors", "LinearSVM", "dilate_boxes", "feature_scale", "fit_box_regressors",
           "train_class_svms", "train_svm", "warp_regions"]
