"""URL routes: the coordinator API, the agent API, the schema, the Django admin and the web console."""

from django.contrib import admin
from django.urls import include, path, re_path

from fedplatform.errors import api_not_found
from fedplatform.health import health
from fedplatform.schema import RedocView, SchemaView, SwaggerView

urlpatterns = [
    path("healthz", health, name="health"),
    path("admin/", admin.site.urls),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/docs/", SwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", RedocView.as_view(url_name="schema"), name="redoc"),
    path("api/agent/v1/", include("agentapi.urls")),
    path("api/v1/", include("institutions.urls")),
    path("api/v1/", include("studies.urls")),
    path("api/v1/", include("training.urls")),
    path("api/v1/", include("queries.urls")),
    path("api/v1/", include("accounts.urls")),
    path("api/v1/", include("audit.urls")),
    # Every other path under api/ is an unknown endpoint: a JSON 404, never an HTML page.
    re_path(r"^api/", api_not_found, name="api-not-found"),
    # The web console last: its pages live at the top level (/, /jobs/, ...).
    path("", include("console.urls")),
]
