"""resfu_med.engine (see README)."""
