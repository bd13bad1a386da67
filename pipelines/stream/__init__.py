"""Prediction inputs as frame streams: sources (video files, frame folders, shard splits, live streams) in
:mod:`pipelines.stream.sources`; sliding windows sampled as the model was tested in :mod:`pipelines.stream.windows`."""
