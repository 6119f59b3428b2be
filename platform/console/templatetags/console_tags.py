"""Small formatting helpers of the console's templates."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from datetime import datetime

from django import template
from django.http import HttpRequest
from django.utils import timezone
from django.utils.formats import date_format

from accounts.selectors import user_scope
from console.pages import role_label as role_label_of
from institutions.selectors import is_online as agent_is_online

register = template.Library()

#: Badge tone of each job, round and decision state.
TONES = {
    "running": "info",
    "collecting": "info",
    "aggregating": "info",
    "open": "info",
    "completed": "success",
    "closed": "success",
    "approved": "success",
    "complete": "success",
    "answered": "success",
    "online": "success",
    "active": "success",
    "deactivated": "neutral",
    "paused": "warning",
    "pending": "warning",
    "waiting": "warning",
    "draft": "neutral",
    "unused": "info",
    "used": "success",
    "withdrawn": "neutral",
    "expired": "neutral",
    "offline": "neutral",
    "cancelled": "danger",
    "failed": "danger",
    "declined": "danger",
    "refused": "danger",
    "revoked": "danger",
}
STATE_LABELS = {"pending": "Not answered"}
#: Strings this long are digests: shown shortened, in full on hover.
DIGEST_LENGTH = 64


@register.filter
def tone(state: object) -> str:
    return TONES.get(str(state), "neutral")


@register.inclusion_tag("console/includes/badge.html")
def badge(state: object, testid: str = "") -> dict[str, str]:
    """A status badge: ``{% badge job.state "job-state" %}``."""
    text = str(state)
    label = STATE_LABELS.get(text, text.replace("_", " ").capitalize())
    return {"state": text, "label": label, "tone": tone(text), "testid": testid}


@register.simple_tag(takes_context=True)
def role_label(context: template.Context) -> str:
    request = context.get("request")
    if not isinstance(request, HttpRequest) or not request.user.is_authenticated:
        return ""
    return role_label_of(request, user_scope(user=request.user))


@register.filter
def ago(moment: datetime | None) -> str:
    """A relative time: "12 s ago", "5 min ago", "3 h ago", else the date."""
    if moment is None:
        return "never"
    seconds = int((timezone.now() - moment).total_seconds())
    if seconds < 60:
        return f"{max(seconds, 0)} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return date_format(timezone.localtime(moment), "DATETIME_FORMAT")


@register.filter
def online(moment: datetime | None) -> bool:
    return agent_is_online(moment)


@register.filter
def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    return f"{minutes // 60} h {minutes % 60} min"


@register.filter
def metric(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "–"
    return f"{value:.4f}"


@register.filter
def pretty_json(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


@register.filter
def decision_counts(participants: Iterable[object]) -> dict[str, int]:
    counts = Counter(str(getattr(participant, "decision", "")) for participant in participants)
    return {"approved": counts["approved"], "declined": counts["declined"], "pending": counts["pending"]}


@register.filter
def rounds_done(job: object) -> int:
    """Training rounds finished, from the ``current_round`` annotation of ``job_list``."""
    num_rounds = int(getattr(job, "num_rounds", 0))
    if getattr(job, "state", "") == "completed":
        return num_rounds
    current = getattr(job, "current_round", None) or 1
    return max(0, min(int(current) - 1, num_rounds))


@register.filter
def filesize(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size = size / 1024  # type: ignore[assignment]
    return str(size)


@register.filter
def metric_label(name: str) -> str:
    """``log_loss`` -> ``Log loss``, ``r2`` -> ``R²``."""
    special = {"r2": "R²", "mse": "MSE", "mae": "MAE", "roc_auc": "ROC AUC"}
    return special.get(name, name.replace("_", " ").capitalize())


@register.filter
def short_value(value: object) -> str:
    """An audit detail for a table cell: digests shortened to 12 characters."""
    text = str(value)
    if len(text) == DIGEST_LENGTH and all(c in "0123456789abcdef" for c in text):
        return f"{text[:12]}…"
    return text
