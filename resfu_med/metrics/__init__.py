"""resfu_med.metrics (see README)."""
