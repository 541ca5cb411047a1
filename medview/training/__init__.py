"""Transfer learning: datasets, splits, the training engine, metrics and export (no Qt)."""
