"""Command-line tools (conversion, profiling, synthetic data)."""
