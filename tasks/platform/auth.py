"""API authentication: ``Authorization: Bearer <token>`` or a browser session (with CSRF).

A request authenticated by a token carries it as ``request.api_token`` (its limits may differ from
its user's); a session request has none.
"""

from datetime import timedelta

from django.utils import timezone
from ninja.security import HttpBearer, django_auth

from tasks.platform.models import ApiToken
from tasks.platform.models.tokens import token_digest

LAST_USED_RESOLUTION = timedelta(minutes=1)


class BearerToken(HttpBearer):
    def authenticate(self, request, token: str):
        try:
            # get(), not first(): the digest is unique, and first() would order the rows too. The
            # enqueue limits of the token and its user come in the same query (allowances).
            row = ApiToken.objects.select_related("user", "enqueue_limits", "user__enqueue_limits").get(
                digest=token_digest(token)
            )
        except ApiToken.DoesNotExist:
            return None
        if not row.user.is_active:
            return None
        now = timezone.now()
        # At most one write a minute per token: never a write on every authenticated request.
        if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
        request.user, request.api_token = row.user, row
        return row.user


API_AUTH = [BearerToken(), django_auth]
