"""Ingest: raw frame folders, .webm videos and label files -> shard rows (dataset readers, folder scans, video
decode, the conversion and its shard layout)."""
