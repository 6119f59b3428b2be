"""Settings from environment variables, validated once at start-up.

Every setting has one name and one meaning in every deployment. The embedded default
(no variables set) keeps everything under ``FEDHEALTH_DATA_DIR``: a SQLite database, a
filesystem Celery transport and the model files. Production sets ``FEDHEALTH_ENV=production``
and must then give a secret key, a database URL, a broker URL and the allowed hosts.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Environment:
    production: bool
    debug: bool
    data_dir: Path
    secret_key: str
    database_url: str
    broker_url: str
    model_storage_dir: Path
    allowed_hosts: list[str]
    csrf_trusted_origins: list[str]
    behind_tls_proxy: bool
    log_level: str
    cache_url: str
    long_poll_per_credential: int
    long_poll_per_process: int
    trusted_proxy_count: int
    login_failure_limit: int
    login_cool_off_minutes: int
    public_api_schema: bool
    session_idle_minutes: int
    session_max_hours: int


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {raw!r}")


def _list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name, "")
    return [item.strip() for item in raw.split(",") if item.strip()] or default


def _count(name: str, default: int, *, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be a whole number of at least {minimum}, got {raw!r}")
    return value


#: Threads of each gunicorn worker (deploy/gunicorn.conf.py reads the same variable).
DEFAULT_WEB_THREADS = 16
CACHE_SCHEMES = ("redis://", "rediss://", "file://")


def _cache_url(data_dir: Path) -> str:
    """The shared cache: Redis, or by default files under the data folder (one machine)."""
    raw = os.environ.get("FEDHEALTH_CACHE_URL", "").strip()
    if not raw:
        return (data_dir / "cache").as_uri()
    if not raw.startswith(CACHE_SCHEMES) or (raw.startswith("file://") and not raw.startswith("file:///")):
        raise ImproperlyConfigured(
            f"FEDHEALTH_CACHE_URL must be redis://, rediss:// or file:///<absolute folder>, got {raw!r}"
        )
    return raw


def cache_settings(url: str) -> dict[str, object]:
    """Django's ``CACHES["default"]`` for a validated ``FEDHEALTH_CACHE_URL``."""
    if url.startswith("file://"):
        return {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": unquote(urlsplit(url).path),
            "KEY_PREFIX": "fedhealth",
            # Past this many entries a third is dropped at random: far above what is kept here.
            "OPTIONS": {"MAX_ENTRIES": 100_000},
        }
    return {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": url,
        "KEY_PREFIX": "fedhealth",
    }


def _required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ImproperlyConfigured(f"{name} must be set when FEDHEALTH_ENV=production")
    return value


def _local_secret_key(data_dir: Path) -> str:
    """A random key kept in the data folder, made on first start: never a default."""
    path = data_dir / "secret_key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


def load() -> Environment:
    mode = os.environ.get("FEDHEALTH_ENV", "development")
    if mode not in {"development", "production"}:
        raise ImproperlyConfigured(f"FEDHEALTH_ENV must be development or production, got {mode!r}")
    production = mode == "production"
    data_dir = Path(os.environ.get("FEDHEALTH_DATA_DIR") or REPO_ROOT / "var").resolve()
    return Environment(
        production=production,
        debug=_flag("FEDHEALTH_DEBUG", default=not production),
        data_dir=data_dir,
        secret_key=_required("SECRET_KEY")
        if production
        else os.environ.get("SECRET_KEY") or _local_secret_key(data_dir),
        database_url=_required("DATABASE_URL")
        if production
        else os.environ.get("DATABASE_URL", f"sqlite:///{data_dir / 'db.sqlite3'}"),
        broker_url=_required("CELERY_BROKER_URL")
        if production
        else os.environ.get("CELERY_BROKER_URL", "filesystem://"),
        model_storage_dir=Path(os.environ.get("FEDHEALTH_MODEL_DIR") or data_dir / "models"),
        allowed_hosts=_list(
            "ALLOWED_HOSTS", [] if production else ["127.0.0.1", "localhost", "[::1]", "testserver"]
        ),
        csrf_trusted_origins=_list("CSRF_TRUSTED_ORIGINS", []),
        behind_tls_proxy=_flag("FEDHEALTH_BEHIND_TLS_PROXY", default=production),
        log_level=os.environ.get("FEDHEALTH_LOG_LEVEL", "INFO").upper(),
        cache_url=_cache_url(data_dir),
        # How many proxies in front append to X-Forwarded-For; 0: the header is ignored.
        trusted_proxy_count=_count("FEDHEALTH_TRUSTED_PROXY_COUNT", 0, minimum=0),
        login_failure_limit=_count("FEDHEALTH_LOGIN_FAILURE_LIMIT", 10, minimum=1),
        login_cool_off_minutes=_count("FEDHEALTH_LOGIN_COOLOFF_MINUTES", 15, minimum=1),
        public_api_schema=_flag("FEDHEALTH_PUBLIC_API_SCHEMA", default=not production),
        session_idle_minutes=_count("FEDHEALTH_SESSION_IDLE_MINUTES", 60, minimum=1),
        session_max_hours=_count("FEDHEALTH_SESSION_MAX_HOURS", 12, minimum=1),
        long_poll_per_credential=_count("FEDHEALTH_LONG_POLL_PER_CREDENTIAL", 2, minimum=1),
        # Half the threads of a worker at most wait in long polls: the rest serve everybody else.
        long_poll_per_process=_count(
            "FEDHEALTH_LONG_POLL_PER_PROCESS",
            max(1, _count("FEDHEALTH_WEB_THREADS", DEFAULT_WEB_THREADS, minimum=1) // 2),
            minimum=1,
        ),
    )
