"""How many rows a list matches, counted up to a cap: an exact count reads every matching row (a
scan of the whole ledger for staff), so a list would be as slow as its table is large; a capped
count reads at most COUNT_CAP + 1 index entries. The API's lists and the admin's job list count so."""

from __future__ import annotations

from django.db.models import QuerySet

#: the most a list counts
COUNT_CAP = 10_000


def count_capped(queryset: QuerySet) -> tuple[int, bool]:
    """(the number of rows ``queryset`` matches, at most COUNT_CAP; whether more match)."""
    counted = queryset.order_by()[: COUNT_CAP + 1].count()
    return min(counted, COUNT_CAP), counted > COUNT_CAP
