"""API tokens: only a SHA-256 of the token is stored; the token itself is shown once."""

import hashlib
import secrets

from django.conf import settings
from django.db import models


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiToken(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name="user",
        on_delete=models.CASCADE,
        related_name="api_tokens",
    )
    digest = models.CharField("SHA-256 of the token", max_length=64, unique=True, editable=False)
    prefix = models.CharField(
        "prefix",
        max_length=8,
        editable=False,
        help_text="First characters of the token, to tell tokens apart.",
    )
    created_at = models.DateTimeField("created at", auto_now_add=True)
    last_used_at = models.DateTimeField("last used at", null=True, blank=True)

    class Meta:
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @classmethod
    def issue(cls, user) -> tuple["ApiToken", str]:
        """Create a token for ``user``; returns the row and the token, which is never stored."""
        token = secrets.token_urlsafe(32)
        row = cls.objects.create(user=user, digest=token_digest(token), prefix=token[:8])
        return row, token
