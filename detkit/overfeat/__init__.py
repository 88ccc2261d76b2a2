"""OverFeat's parts: fully convolutional classifier, offset max pooling, box regression network,
greedy box merging. The detector itself is ``detkit.methods.overfeat``."""
