"""Detection methods assembled from parts: ``rcnn`` (R-CNN), ``sppnet`` (SPPNet), ``overfeat``
(OverFeat), ``fast_rcnn`` (Fast R-CNN), ``faster_rcnn`` (Faster R-CNN); ``base`` (``Detector``: input
normalisation, target padding, and what each method declares) and ``detector`` (the detectors on a
backbone). Import from the submodules: configs name them in full
(``_target_: detkit.methods.faster_rcnn.faster_rcnn``).
"""
