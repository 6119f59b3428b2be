"""Django settings of the control plane: everything comes from ``fedplatform.env``."""

from __future__ import annotations

import os
from datetime import timedelta

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from fedplatform import env as environment

ENV = environment.load()
if ENV.production and not ENV.allowed_hosts:
    raise ImproperlyConfigured("ALLOWED_HOSTS must be set when FEDHEALTH_ENV=production")

BASE_DIR = environment.REPO_ROOT
DATA_DIR = ENV.data_dir
SECRET_KEY = ENV.secret_key
DEBUG = ENV.debug
ALLOWED_HOSTS = ENV.allowed_hosts
CSRF_TRUSTED_ORIGINS = ENV.csrf_trusted_origins

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "accounts",
    "audit",
    "institutions",
    "studies",
    "training",
    "queries",
    "agentapi",
    "console",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "console.middleware.ContentSecurityPolicyMiddleware",
    "console.middleware.MethodNotAllowedPageMiddleware",
    "accounts.sessions.SessionTimeoutMiddleware",
    # Last, as django-axes asks: turns a refused sign-in into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "fedplatform.urls"
WSGI_APPLICATION = "fedplatform.wsgi.application"

# The web console (console/): its own sign-in pages; the Django admin keeps its own.
LOGIN_URL = "console:login"
LOGIN_REDIRECT_URL = "console:overview"
LOGOUT_REDIRECT_URL = "console:login"

# --- Sign-in throttling (django-axes), for the console's and the admin's sign-in pages ------
# The first backend refuses a locked-out user name or address before any password is
# checked; the second one checks passwords.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_ENABLED = True
# Failures are counted per user name and, separately, per client address; either count
# reaching the limit locks that user name (from everywhere) or that address (for every name).
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_FAILURE_LIMIT = ENV.login_failure_limit
# Failures older than this (counted from the latest one) no longer count: the lockout ends.
AXES_COOLOFF_TIME = timedelta(minutes=ENV.login_cool_off_minutes)
# A success must not wipe the counts: an attacker's own account, signed in from the address
# the attack comes from, would otherwise clear every failure counted against that address.
AXES_RESET_ON_SUCCESS = False
AXES_CLIENT_IP_CALLABLE = "fedplatform.client_address.client_address"
AXES_LOCKOUT_CALLABLE = "console.views.signin.lockout_response"
FEDHEALTH_TRUSTED_PROXY_COUNT = ENV.trusted_proxy_count

# The API schema and its viewers (/api/schema/, /api/docs/, /api/redoc/): open to anyone, or
# (false, the default in production) to signed-in people only: API token or console session.
FEDHEALTH_PUBLIC_API_SCHEMA = ENV.public_api_schema

# --- Sessions: they end after an idle time, and in any case some hours after sign-in --------
FEDHEALTH_SESSION_IDLE_SECONDS = ENV.session_idle_minutes * 60
FEDHEALTH_SESSION_MAX_SECONDS = ENV.session_max_hours * 3600
SESSION_COOKIE_AGE = FEDHEALTH_SESSION_MAX_SECONDS

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Health checks: threaded web workers keep connections that go stale when the server restarts.
DATABASES = {"default": dj_database_url.parse(ENV.database_url, conn_max_age=60, conn_health_checks=True)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes (web, worker, beat) share one file: WAL lets readers run beside the
    # writer, IMMEDIATE transactions take the write lock up front (no upgrade deadlocks),
    # and writers wait for each other instead of failing.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# One cache shared by every web process (long-poll counts, enrollment throttling): Redis in
# production, by default files under the data folder (shared by the processes of one machine).
CACHES = {"default": environment.cache_settings(ENV.cache_url)}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise expects it, even before collectstatic
STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(ENV.model_storage_dir)},
    },
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Uploads: a model update is streamed to a temporary file above 2.5 MB; the per-study cap
# is checked against the model spec in the service layer.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
FEDHEALTH_MAX_UPLOAD_BYTES = int(os.environ.get("FEDHEALTH_MAX_UPLOAD_BYTES", 1024 * 1024 * 1024))

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: an unauthenticated request then gets 401 with WWW-Authenticate, not 403.
        "accounts.authentication.ExpiringTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "fedplatform.errors.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_THROTTLE_RATES": {"enroll": "30/minute", "invitation": "30/minute"},
    # Proxies in front whose X-Forwarded-For is trusted: throttling counts per client address,
    # so with 0 (gunicorn reached directly) a client cannot choose its address by a header.
}

SPECTACULAR_SETTINGS = {
    "TITLE": "fedhealth control plane",
    "DESCRIPTION": "Institutions, studies, federated jobs and the agent protocol.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # A summary request and a federated query go through the same states.
    "ENUM_NAME_OVERRIDES": {"RequestStateEnum": ["open", "complete", "failed", "expired"]},
}

# --- Celery: JSON only, IDs only, late acks, nothing lost when a worker dies ------------
CELERY_BROKER_URL = ENV.broker_url
BROKER_FOLDER = DATA_DIR / "broker"
if CELERY_BROKER_URL.startswith("filesystem://"):
    # Kombu's own filesystem transport can hand a worker a half-written message.
    CELERY_BROKER_TRANSPORT = "fedplatform.broker:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_FOLDER),
        "data_folder_out": str(BROKER_FOLDER),
        "processed_folder": str(DATA_DIR / "broker-processed"),
        "control_folder": str(DATA_DIR / "broker-control"),
        "store_processed": False,
        "polling_interval": 0.05,
    }
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_TIME_LIMIT = 600
CELERY_TASK_SOFT_TIME_LIMIT = 540
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Model work (aggregation, building a job's initial model) has its own queue and workers.
CELERY_TASK_ROUTES = {
    "training.tasks.round_aggregate_task": {"queue": "aggregation"},
    "training.tasks.job_begin_task": {"queue": "aggregation"},
}
CELERY_BEAT_SCHEDULE = {
    "sweep-round-deadlines": {"task": "training.tasks.rounds_sweep_task", "schedule": 2.0},
}
CELERY_TASK_ALWAYS_EAGER = False

FEDHEALTH_ENROLLMENT_TOKEN_HOURS = 24
# How long the sites have to answer a study's summary request (the data agreement).
FEDHEALTH_SUMMARY_DEADLINE_SECONDS = int(os.environ.get("FEDHEALTH_SUMMARY_DEADLINE_SECONDS", 600))
# How long a federated query waits for the data owners' decisions and the agents' answers.
FEDHEALTH_QUERY_DEADLINE_SECONDS = int(os.environ.get("FEDHEALTH_QUERY_DEADLINE_SECONDS", 3 * 24 * 3600))
# The largest model a study may use, counted from its config before anything is built.
FEDHEALTH_MAX_MODEL_PARAMETERS = int(os.environ.get("FEDHEALTH_MAX_MODEL_PARAMETERS", 50_000_000))
FEDHEALTH_API_TOKEN_DAYS = int(os.environ.get("FEDHEALTH_API_TOKEN_DAYS", 30))
FEDHEALTH_LONG_POLL_MAX_SECONDS = 30
# Long polls that may wait at once: per agent credential (across all web processes, counted
# in the cache), and per web process (its other threads keep serving everybody else).
FEDHEALTH_LONG_POLL_PER_CREDENTIAL = ENV.long_poll_per_credential
FEDHEALTH_LONG_POLL_PER_PROCESS = ENV.long_poll_per_process
# What a refused long poll is told: come back after this many seconds.
FEDHEALTH_LONG_POLL_RETRY_AFTER_SECONDS = 5
# How often a waiting long poll looks for work: the floor of the round-to-round latency.
FEDHEALTH_LONG_POLL_INTERVAL_SECONDS = float(os.environ.get("FEDHEALTH_LONG_POLL_INTERVAL_SECONDS", 0.05))
# An aggregation that started this long ago and has not finished is started again (its
# message was lost); a repeat is harmless, since the result is written only once.
FEDHEALTH_STUCK_AGGREGATION_SECONDS = int(os.environ.get("FEDHEALTH_STUCK_AGGREGATION_SECONDS", 300))
# The crash drills' pause point (tests/faults): an aggregation waits this long between its
# claim and its maths, so that a kill timed from the claim lands before the commit. 0, no
# pause, everywhere else; it must stay well under the stuck-aggregation delay above.
FEDHEALTH_DRILL_PAUSE_AFTER_CLAIM_SECONDS = float(
    os.environ.get("FEDHEALTH_DRILL_PAUSE_AFTER_CLAIM_SECONDS", 0)
)
if not 0 <= FEDHEALTH_DRILL_PAUSE_AFTER_CLAIM_SECONDS < FEDHEALTH_STUCK_AGGREGATION_SECONDS:
    raise ImproperlyConfigured(
        "FEDHEALTH_DRILL_PAUSE_AFTER_CLAIM_SECONDS must lie in [0, FEDHEALTH_STUCK_AGGREGATION_SECONDS)"
    )

if ENV.behind_tls_proxy:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
if ENV.production:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = 31536000
    SECURE_CONTENT_TYPE_NOSNIFF = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": ENV.log_level},
    "loggers": {"django.server": {"level": "WARNING"}},
}
