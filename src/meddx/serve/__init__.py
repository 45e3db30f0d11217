"""meddx.serve."""
