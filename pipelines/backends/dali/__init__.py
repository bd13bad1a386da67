"""``backend="dali"``: shards -> NVIDIA DALI decode/crop/resize/flip graph (GPU "mixed" or CPU) -> uint8 batches."""
