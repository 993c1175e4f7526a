"""Django admin of the reports domain."""
