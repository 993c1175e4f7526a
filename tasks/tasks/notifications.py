"""Tasks of the notifications domain (default queue)."""
