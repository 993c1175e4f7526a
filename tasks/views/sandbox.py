"""A sandbox payment gateway served by the web app for local runs and tests."""

urlpatterns: list = []
