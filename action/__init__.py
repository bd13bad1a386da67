"""ACTION-ResNet models: temporal modules, TSN wrapper, checkpoints, optimiser groups."""
