"""Tasks of the reports domain (bulk queue)."""
