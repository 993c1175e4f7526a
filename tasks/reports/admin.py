"""Django admin of the reports domain: sales reports, their build job and their PDF."""

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from tasks.reports.models import Report


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "owner",
        "date_from",
        "date_to",
        "job_state",
        "order_count",
        "revenue",
        "created_at",
        "finished_at",
        "download_link",
    )
    list_filter = ("date_from", "date_to", ("owner", admin.RelatedOnlyFieldListFilter), "finished_at")
    search_fields = ("=id", "owner__username")
    date_hierarchy = "created_at"
    list_select_related = ("owner", "job")
    # Reports are asked for through the API and written by their job: admins read them.
    fields = (
        "id",
        "owner",
        "date_from",
        "date_to",
        "job_link",
        "job_state",
        "order_count",
        "unit_count",
        "row_count",
        "revenue",
        "created_at",
        "finished_at",
        "download_link",
    )
    readonly_fields = fields

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="job")
    def job_link(self, report: Report) -> str:
        if report.job_id is None:
            return "-"
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:tasks_job_change", args=[report.job_id]), report.job_id
        )

    @admin.display(description="state")
    def job_state(self, report: Report) -> str:
        if report.job is None:
            return "built (job pruned)" if report.finished_at else "-"
        return report.job.get_state_display()

    @admin.display(description="PDF")
    def download_link(self, report: Report) -> str:
        if not report.ready:
            return "-"
        return format_html('<a href="{}">download</a>', reverse("report_download", kwargs={"report_id": report.pk}))
