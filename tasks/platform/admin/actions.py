"""What the admin actions share: apply a service to each selected row and report the outcome."""

from collections.abc import Callable, Iterable

from django.contrib import admin, messages

from tasks.platform.services.recovery import ActionRefused


def apply_each(
    model_admin: admin.ModelAdmin, request, rows: Iterable, action: Callable[[object], object], *, done: str
) -> None:
    """Run ``action`` on each row; report how many it applied to (``done``: "3 job(s) retried.")
    and, for the rows it refused, why."""
    applied, refused = 0, []
    for row in rows:
        try:
            action(row)
            applied += 1
        except ActionRefused as exc:
            refused.append(f"{row.pk}: {exc}")
    if applied:
        model_admin.message_user(request, f"{applied} {done}.", messages.SUCCESS)
    if refused:
        model_admin.message_user(request, "Not changed: " + "; ".join(refused), messages.WARNING)
