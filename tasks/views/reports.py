"""Views of reports."""

urlpatterns: list = []
