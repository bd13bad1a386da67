"""``backend="torch"``: shards -> decode threads/processes (or batched nvJPEG on the device) -> uint8 batches."""
