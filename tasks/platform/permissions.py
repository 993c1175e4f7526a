"""Who may do what beyond their own objects: one place for the platform's roles.

- An *operator* is a staff user with the permission to add jobs (``tasks.add_job``), or a
  superuser: they may enqueue the operators' tasks (``ops.*``) on any queue and priority.
- A staff user sees everyone's objects of a model in the API and on the site only with that
  model's view or change permission (their *staff scope*), and acts on others' objects only with
  its change permission. Without them a staff user is a user like any other there.
"""

from __future__ import annotations

#: the permission that makes a staff user an operator
OPERATOR_PERMISSION = "tasks.add_job"
#: the permission to ask for sales reports (their figures are the whole shop's)
REPORT_PERMISSION = "tasks.add_report"


def is_operator(user) -> bool:
    return bool(user.is_active and user.is_staff and user.has_perm(OPERATOR_PERMISSION))


def has_staff_scope(user, model: str, *, to_change: bool = False) -> bool:
    """Whether ``user`` may see (``to_change``: act on) every ``tasks.<model>``, not only their own."""
    if not (user.is_active and user.is_staff):
        return False
    if to_change:
        return user.has_perm(f"tasks.change_{model}")
    return user.has_perm(f"tasks.view_{model}") or user.has_perm(f"tasks.change_{model}")
