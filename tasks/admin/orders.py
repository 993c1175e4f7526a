"""Django admin of the orders domain: products, orders and their workflow steps, ops alerts."""
