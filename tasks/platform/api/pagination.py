"""The one pagination of every list endpoint (GET /api/jobs, /api/orders, /api/reports).

``page`` and ``page_size`` are query parameters whose bounds are declared in the OpenAPI schema
and enforced before the view runs: out of range answers 422 ``invalid_request`` naming the field.
ninja's PageNumberPagination declares no maximum for either, so a huge ``page`` made an OFFSET
past the database's 64-bit integers (a 500). The answer is
``{"items": [...], "count": n, "count_capped": false}``.

``count`` is exact up to COUNT_CAP; past it, the answer says ``"count": COUNT_CAP, "count_capped":
true`` (tasks.platform.selectors.counts says why).
"""

from typing import Any

from django.db.models import QuerySet
from django.http import HttpRequest
from ninja import Field, Schema
from ninja.pagination import PaginationBase, paginate

from tasks.platform.json_types import QueryInt
from tasks.platform.selectors.counts import COUNT_CAP, count_capped

#: items a page, when page_size is left out
PAGE_SIZE = 50
#: most items a page
MAX_PAGE_SIZE = 200
#: the last page one may ask for: the OFFSET stays under 2**31 (MAX_PAGE * MAX_PAGE_SIZE = 2e8), within
#: any database's integers, and far past any list a user can page through
MAX_PAGE = 1_000_000


class ListPagination(PaginationBase):
    """Page-number pagination with declared and enforced bounds (sync views only)."""

    class Input(Schema):
        page: QueryInt = Field(1, ge=1, le=MAX_PAGE, description=f"The page, from 1 (at most {MAX_PAGE:,}).")
        page_size: QueryInt = Field(
            PAGE_SIZE,
            ge=1,
            le=MAX_PAGE_SIZE,
            description=f"Items a page, 1 to {MAX_PAGE_SIZE} ({PAGE_SIZE} by default).",
        )

    class Output(Schema):
        items: list[Any]
        count: int = Field(description=f"How many items match, counted up to {COUNT_CAP:,}.")
        count_capped: bool = Field(description=f"True when more than {COUNT_CAP:,} items match.")

    def paginate_queryset(self, queryset: QuerySet, pagination: Input, request: HttpRequest, **params: Any) -> Any:
        offset = (pagination.page - 1) * pagination.page_size
        count, capped = count_capped(queryset)
        return {
            self.items_attribute: queryset[offset : offset + pagination.page_size],
            "count": count,
            "count_capped": capped,
        }


#: the decorator of every list view, under its @api.get(..., response={200: list[ItemOut], ...})
paginated = paginate(ListPagination)
