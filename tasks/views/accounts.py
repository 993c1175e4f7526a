"""Views of accounts."""

urlpatterns: list = []
