"""Box-level building blocks shared by the detectors: ``box_coder``, ``matcher``, ``sampler``, ``nms``."""
