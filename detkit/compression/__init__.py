"""Making a trained detector cheaper at test time: truncated SVD of the region head's fc layers."""
from detkit.compression.svd import SVDLayerReport, compress_region_head, truncated_svd

__all__ = ["SVDLayerReport", "compress_region_head", "truncated_svd"]
