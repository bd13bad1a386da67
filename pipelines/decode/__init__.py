"""Decode: the one JPEG rule, frame decode and resampling that execute a ClipPlan, and the executors that run
them in threads or processes."""
