"""``GET /healthz``: the process answers and its database is reachable.

It also reports the Python version through the standard library's ``platform`` module,
which shows at a glance that the project's ``platform/`` folder shadows nothing.
"""

import platform

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_safe


@require_safe
def health(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok", "python": platform.python_version()})
