"""meddx.deploy."""
