"""The address a request came from, as far as the configured proxies vouch for it.

``X-Forwarded-For`` is whatever the client sent unless a proxy of ours wrote it. With
``FEDHEALTH_TRUSTED_PROXY_COUNT`` = n > 0 (n proxies in front, each appending the address it
saw, or the edge one overwriting the header as deploy/nginx/fedhealth.conf does), the client
is the n-th address from the right; anything further left may be forged. With n = 0 (the
default) the header is ignored and the peer address (``REMOTE_ADDR``) is the client.
"""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest
from rest_framework.request import Request
from rest_framework.throttling import ScopedRateThrottle


def _valid(address: str) -> str | None:
    try:
        return str(ipaddress.ip_address(address.strip()))
    except ValueError:
        return None


def client_address(request: HttpRequest) -> str | None:
    """The client's IP address (``None`` for a request that has none, such as a test's)."""
    peer = request.META.get("REMOTE_ADDR") or None
    proxies: int = settings.FEDHEALTH_TRUSTED_PROXY_COUNT
    if proxies == 0:
        return peer
    forwarded = [part for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
    if len(forwarded) < proxies:
        return peer  # not written by the proxies we were told of: trust only the peer
    return _valid(forwarded[-proxies]) or peer


class ClientAddressThrottle(ScopedRateThrottle):
    """A DRF throttle counted per client address, as the sign-in throttle counts."""

    def get_ident(self, request: Request) -> str:
        return client_address(request) or "unknown"
