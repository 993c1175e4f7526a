"""Errors a task raises to steer failure handling."""


class PermanentError(Exception):
    """Retrying cannot help (bad input, a refused request): the job goes straight to dead."""
