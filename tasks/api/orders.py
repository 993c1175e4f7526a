"""Orders: place one (the fulfillment workflow starts at once) and follow it."""
