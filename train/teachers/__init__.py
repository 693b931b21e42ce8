"""Frozen teachers for semantic guidance and the psychological emotion prior."""
