"""detkit's Hydra configs (``train.yaml`` and the groups ``method/``, ``backbone/``, ``data/``,
``preset/``, ``speed/``; ``experiments/`` suites), shipped inside the package so an installed ``detkit`` finds them."""
