"""Sales reports: request one, follow it, download its PDF."""
