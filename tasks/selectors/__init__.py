"""Read-only queries for views: what a caller may see of the job ledger and the broker."""
