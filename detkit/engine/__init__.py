"""Training and inference machinery shared by every method.

Modules: ``checkpoint`` (atomic, ``weights_only`` checkpoints; rebuilding a model from its saved
config), ``optim`` (SGD and the warm-up + step/cosine schedule), ``distributed`` (torchrun / DDP
helpers), ``evaluator`` (batched prediction in original-image coordinates, VOC/COCO scoring),
``trainer`` (the iteration-based loop with exact resume), ``run`` (``train_from_config``: config ->
data, model, training, test scores, for tools/train.py), ``stages`` (R-CNN/SPPNet stage-wise training).
"""
