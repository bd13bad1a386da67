"""``backend="ffcv"``: shards -> .beton files (convert) -> FFCV loader with numba kernels -> uint8 batches."""
