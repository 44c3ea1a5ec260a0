"""resfu_med.bundle (see README)."""
