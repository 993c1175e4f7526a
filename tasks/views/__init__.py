"""HTML and plain-HTTP views, one module per concern; each has its ``urlpatterns``."""
