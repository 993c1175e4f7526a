"""Django admin of the notifications domain."""
