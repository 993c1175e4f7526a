"""The order-fulfillment workflow steps (critical queue)."""
