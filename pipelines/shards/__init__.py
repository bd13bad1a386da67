"""Shards: the Arrow format and manifest contract, the writer, the readers (memory-mapped local, node cache, direct
range reads), verification, and the filesystems they live on."""
