"""Region proposals: ``anchors`` and ``rpn`` (Faster R-CNN), ``selective_search`` and ``cache``
(R-CNN, SPPNet, Fast R-CNN).
"""
