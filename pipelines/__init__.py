"""Data pipelines: shard format, TSN sampling, crop/flip geometry and loader backends."""
