"""Plan: pure functions that decide everything random about a clip before a byte is decoded (TSN sampling, crop
geometry, presets, the rank partition) and the Planner that applies them to one split."""
