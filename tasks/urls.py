from django.urls import path

from tasks.accounts import views as accounts
from tasks.api import api
from tasks.localmail import views as mail
from tasks.orders import sandbox
from tasks.orders import views as orders
from tasks.platform import health, live
from tasks.reports import views as reports

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
