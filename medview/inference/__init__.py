"""Local inference: the Predictor and device selection."""
