"""The lineage side by side: R-CNN, SPPNet, OverFeat, Fast R-CNN and Faster R-CNN trained on one data
set with one backbone and budget, measured alike, and shown on one HTML page (``detkit lineage``).

``steps`` (the methods and what each changed), ``run`` (train or take, measure, write),
``measure`` (test time by phase, proposal recall), ``figures`` and ``report`` (the page).
"""
