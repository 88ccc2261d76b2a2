"""Detection methods assembled from parts: ``fast_rcnn`` (Fast R-CNN), ``faster_rcnn`` (Faster R-CNN),
``detector`` (the shared two-stage base). Import from the submodules: configs name them in full
(``_target_: detkit.methods.faster_rcnn.faster_rcnn``).
"""
