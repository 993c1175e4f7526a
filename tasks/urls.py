from django.urls import path

from tasks import live
from tasks.api import api
from tasks.views import accounts, health, mail, orders, reports, sandbox

urlpatterns = [
    # Before the API: a streaming async view of its own, outside django-ninja.
    path("api/jobs/<uuid:job_id>/events", live.job_events, name="job_events"),
    path("api/", api.urls),
    path("jobs/<uuid:job_id>", live.job_page, name="job_page"),
    *health.urlpatterns,
    *orders.urlpatterns,
    *reports.urlpatterns,
    *accounts.urlpatterns,
    *sandbox.urlpatterns,
    *mail.urlpatterns,
]
