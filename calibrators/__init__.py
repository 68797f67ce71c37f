"""Pure calibration math: scoring logprobs, calibrators, metrics, thresholds, profiles."""
