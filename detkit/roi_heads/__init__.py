"""Region (RoI) heads: ``roi_pool`` (RoI pooling), ``spp`` (spatial pyramid pooling),
``box_predictor`` and ``fast_rcnn`` (the Fast R-CNN head).
"""
