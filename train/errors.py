"""Errors of the training package that light callers catch without importing torch."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or lacks a required entry (message names the file)."""
