"""API tokens for people and scripts: like DRF's, but they expire."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed


class ExpiringTokenAuthentication(TokenAuthentication):
    """``Authorization: Token <key>``, refused once the token is older than
    ``FEDHEALTH_API_TOKEN_DAYS``; ``manage.py create_user --token`` issues a fresh one."""

    def authenticate_credentials(self, key: str) -> tuple[AbstractBaseUser, Token]:
        user, token = super().authenticate_credentials(key)
        if token.created < timezone.now() - timedelta(days=settings.FEDHEALTH_API_TOKEN_DAYS):
            raise AuthenticationFailed("this API token has expired; ask for a new one")
        return user, token
