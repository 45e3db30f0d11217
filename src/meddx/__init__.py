"""meddx."""
