"""Console sessions end after an idle time and, in any case, some hours after sign-in.

The session keeps when it was signed in and when it was last used (to the minute, so that a
page polling every few seconds does not write the session each time). A request that finds
the session idle for longer than ``FEDHEALTH_SESSION_IDLE_SECONDS``, or signed in longer
ago than ``FEDHEALTH_SESSION_MAX_SECONDS``, ends it: the person is signed out and sent to
the sign-in page like anyone signed out. The cookie and the stored session also expire at
the absolute limit (``SESSION_COOKIE_AGE``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.conf import settings
from django.contrib.auth import logout
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest, HttpResponseBase
from django.urls import Resolver404, resolve

SIGNED_IN_AT = "fedhealth_signed_in_at"
LAST_SEEN_AT = "fedhealth_last_seen_at"
#: Activity is written back at most this often.
LAST_SEEN_RESOLUTION_SECONDS = 60
#: Pages a browser asks for on its own (the live job page's polling): they are not a person's
#: activity, so an unattended screen still reaches the idle timeout.
BACKGROUND_VIEWS = frozenset({"console:job-live"})


def session_mark_signed_in(
    *, sender: object, request: HttpRequest, user: AbstractBaseUser, **kwargs: object
) -> None:
    """``user_logged_in`` receiver: a new session starts its clocks."""
    now = int(time.time())
    request.session[SIGNED_IN_AT] = now
    request.session[LAST_SEEN_AT] = now


def session_expired(*, signed_in_at: int, last_seen_at: int, now: int) -> bool:
    return (
        now - last_seen_at > settings.FEDHEALTH_SESSION_IDLE_SECONDS
        or now - signed_in_at > settings.FEDHEALTH_SESSION_MAX_SECONDS
    )


class SessionTimeoutMiddleware:
    """Signs out a session that was idle too long or is too old; records activity."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.user.is_authenticated:
            self._check(request)
        return self.get_response(request)

    def _check(self, request: HttpRequest) -> None:
        session = request.session
        now = int(time.time())
        signed_in_at = int(session.setdefault(SIGNED_IN_AT, now))
        last_seen_at = int(session.get(LAST_SEEN_AT, now))
        if session_expired(signed_in_at=signed_in_at, last_seen_at=last_seen_at, now=now):
            logout(request)  # flushes the session; request.user is anonymous from here on
        elif _persons_activity(request) and (
            LAST_SEEN_AT not in session or now - last_seen_at >= LAST_SEEN_RESOLUTION_SECONDS
        ):
            session[LAST_SEEN_AT] = now


def _persons_activity(request: HttpRequest) -> bool:
    try:
        return resolve(request.path_info).view_name not in BACKGROUND_VIEWS
    except Resolver404:
        return True
