"""Looking at detectors from outside: what they are, how fast they run, how they compare.

* ``architecture/`` — seeing a network: per-layer shapes, parameters, multiply-adds, stride and
  receptive field (``summary``, ``receptive_field``, ``table``; ``detkit summary``).
* ``benchmarking/`` — measuring: training images/s and test latency by phase (``benchmark``,
  ``timing``, ``method_inputs``, ``machine``), the torchvision twin of a Faster R-CNN
  (``torchvision_compare``) and accuracy at equal training time (``compare_train``), OverFeat's
  merge-vs-NMS re-scoring (``merge_compare``).
* ``suite/`` — the experiment suite: groups of runs from a YAML file (``experiments``) and the
  tables and plots made from their results (``results_report``).
"""
