"""Making a trained detector cheaper at test time: truncated SVD of the region head's fc layers,
int8 dynamic quantisation of the fc layers, int8 static quantisation of the trunk, batch norm
folded into the convolutions."""
from detkit.compression.fast import make_fast
from detkit.compression.fold import fold_batch_norms
from detkit.compression.int8 import has_linear_layers, int8_in_fast, quantize_linear_layers
from detkit.compression.int8_trunk import quantize_trunk
from detkit.compression.svd import SVDLayerReport, compress_region_head, truncated_svd

__all__ = ["SVDLayerReport", "compress_region_head", "fold_batch_norms", "has_linear_layers", "int8_in_fast",
           "make_fast", "quantize_linear_layers", "quantize_trunk", "truncated_svd"]
