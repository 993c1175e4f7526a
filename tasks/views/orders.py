"""The order pages: the order form, and an order with its workflow steps live."""

urlpatterns: list = []
