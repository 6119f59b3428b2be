"""The agent's configuration file (TOML), validated into frozen dataclasses.

Every error names the offending key (``policy.max_rounds: must be an integer >= 1``), so a
hospital's administrator can fix the file without reading code. Unknown keys are errors
too: a typo in a policy key must never silently fall back to a permissive default.
Relative paths are relative to the directory of the configuration file.

See ``deploy/agent/agent.example.toml`` for an annotated example.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from federation.models.lora import SiteModelOptions
from federation.policy_limits import WILDCARD, PolicyLimits
from silo_agent.errors import ConfigError

#: The API bounds the long-poll wait to 0..30 seconds.
MAX_POLL_WAIT_SECONDS = 30

_TOP_LEVEL_KEYS = {
    "server_url",
    "credential_file",
    "state_dir",
    "ca_bundle",
    "poll_wait_seconds",
    "data",
    "policy",
    "models",
}
_MODELS_KEYS = {"device", "cache_dir", "folders"}
_DEVICES = ("auto", "cpu", "cuda")
_DATA_KEYS = {"path", "builtin", "rows"}
_POLICY_KEYS = {
    "approved_studies",
    "max_rounds",
    "max_epochs",
    "allowed_model_kinds",
    "allowed_strategies",
    "privacy",
    "filters",
    "summaries",
    "analytics",
}
_ANALYTICS_KEYS = {"min_count", "require_secure_aggregation", "max_epsilon", "allow_evaluation"}
_SUMMARY_KEYS = {"min_rows", "require_secure_aggregation"}
_PRIVACY_KEYS = {"require_secure_aggregation", "require_differential_privacy", "max_epsilon"}
_FILTER_KEYS = {"clip_update_norm", "exclude_layers"}
_DEFAULT_MODEL_KINDS = ("logistic", "mlp", "cnn", "sklearn_sgd", "sklearn_logistic")


class DataSourceKind(enum.StrEnum):
    """Where the site's rows come from."""

    CSV = "csv"
    BUILTIN = "builtin"


@dataclass(frozen=True)
class DataSource:
    """The site's local data: a CSV export read with the study's schema, or (for demos and
    tests) a built-in data set, optionally restricted to the row indices in ``rows_file``."""

    kind: DataSourceKind
    csv_path: Path | None = None
    builtin_name: str | None = None
    rows_file: Path | None = None


@dataclass(frozen=True)
class PrivacyPolicy:
    """Privacy demands of the hospital. The defaults ask for nothing."""

    require_secure_aggregation: bool = False
    require_differential_privacy: bool = False
    max_epsilon: float = math.inf


@dataclass(frozen=True)
class SummaryPolicy:
    """What the site tells for a study's data agreement: aggregates of at least ``min_rows``
    rows, and, with ``require_secure_aggregation``, nothing the server would see unmasked."""

    min_rows: int = 10
    require_secure_aggregation: bool = False


@dataclass(frozen=True)
class AnalyticsPolicy:
    """What the site answers of federated queries: no cell, bin or time step of fewer than
    ``min_count`` rows (suppressed and marked); with ``require_secure_aggregation`` only
    securely summed queries; noised queries up to ``max_epsilon`` in total (the site's own
    record, ``answers.jsonl``, counts it); model evaluations only with ``allow_evaluation``."""

    min_count: int = 5
    require_secure_aggregation: bool = False
    max_epsilon: float = math.inf
    allow_evaluation: bool = True


@dataclass(frozen=True)
class UpdateFilters:
    """What the hospital does to every update before it leaves, whatever the study says.

    ``clip_update_norm`` bounds the L2 norm of the update's change to the global model;
    ``exclude_layers`` names tensors sent back unchanged (the global model's values), so
    that what the site learned in them never leaves.
    """

    clip_update_norm: float | None = None
    exclude_layers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    """The hospital's own rules, enforced whatever the server asks."""

    approved_studies: tuple[str, ...]
    max_rounds: int = 100
    max_epochs: int = 10
    allowed_model_kinds: tuple[str, ...] = _DEFAULT_MODEL_KINDS
    allowed_strategies: tuple[str, ...] = (WILDCARD,)
    privacy: PrivacyPolicy = PrivacyPolicy()
    filters: UpdateFilters = UpdateFilters()
    summaries: SummaryPolicy = SummaryPolicy()
    analytics: AnalyticsPolicy = AnalyticsPolicy()

    def limits(self) -> PolicyLimits:
        """The limits a job can be checked against before it starts (reported with heartbeats)."""
        return PolicyLimits(
            max_rounds=self.max_rounds,
            max_epochs=self.max_epochs,
            allowed_model_kinds=self.allowed_model_kinds,
            allowed_strategies=self.allowed_strategies,
            require_secure_aggregation=self.privacy.require_secure_aggregation,
            require_differential_privacy=self.privacy.require_differential_privacy,
            max_epsilon=self.privacy.max_epsilon,
        )


@dataclass(frozen=True)
class AgentConfig:
    """The whole validated configuration file."""

    config_path: Path
    server_url: str
    credential_file: Path
    state_dir: Path
    ca_bundle: Path | None
    poll_wait_seconds: int
    data: DataSource
    policy: Policy
    #: Where pretrained base models are on this site's disk, the device that trains them.
    models: SiteModelOptions = field(default_factory=SiteModelOptions)


def load_config(path: Path) -> AgentConfig:
    """Read and validate the TOML file at ``path``; raises :class:`ConfigError`."""
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror or error})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    return parse_config(document, config_path=path.resolve())


def parse_config(document: Mapping[str, object], *, config_path: Path) -> AgentConfig:
    """Validate a parsed TOML document; relative paths resolve against ``config_path``'s folder."""
    _reject_unknown(document, _TOP_LEVEL_KEYS, prefix="")
    base = config_path.parent
    ca_bundle = _text(document, "ca_bundle", default="", allow_empty=True)
    state_dir = base / _text(document, "state_dir", default="state")
    return AgentConfig(
        config_path=config_path,
        server_url=check_server_url(_text(document, "server_url")),
        credential_file=base / _text(document, "credential_file", default="credential.json"),
        state_dir=state_dir,
        ca_bundle=_existing_file(base / ca_bundle, "ca_bundle") if ca_bundle else None,
        poll_wait_seconds=_integer(
            document, "poll_wait_seconds", default=25, minimum=0, maximum=MAX_POLL_WAIT_SECONDS
        ),
        data=_parse_data(_table(document, "data"), base),
        policy=_parse_policy(_table(document, "policy")),
        models=_parse_models(_table(document, "models", required=False), base, state_dir),
    )


def check_server_url(url: str, key: str = "server_url") -> str:
    """The URL without a trailing slash; plain http is allowed only to a loopback address."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"{key}: must be an https:// URL with a host name, got {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"{key}: must not hold user names, passwords, a query or a fragment")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError(
            f"{key}: plain http:// is only allowed to a loopback address (127.0.0.0/8, ::1, localhost); "
            f"use https:// for {parts.hostname}"
        )
    return url.rstrip("/")


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and for addresses in 127.0.0.0/8 or ``::1``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_data(table: Mapping[str, object], base: Path) -> DataSource:
    _reject_unknown(table, _DATA_KEYS, prefix="data.")
    has_path, has_builtin = "path" in table, "builtin" in table
    if has_path == has_builtin:
        raise ConfigError("data: give exactly one of data.path (a CSV file) or data.builtin")
    if has_path:
        if "rows" in table:
            raise ConfigError("data.rows: only allowed with data.builtin")
        return DataSource(DataSourceKind.CSV, csv_path=base / _text(table, "path", prefix="data."))
    name = _text(table, "builtin", prefix="data.")
    _check_builtin_name(name)
    rows = table.get("rows")
    rows_file = base / _text(table, "rows", prefix="data.") if rows is not None else None
    return DataSource(DataSourceKind.BUILTIN, builtin_name=name, rows_file=rows_file)


def _check_builtin_name(name: str) -> None:
    from federation.data.builtin import BUILTIN_DATASETS  # imports scikit-learn: only when needed

    if name not in BUILTIN_DATASETS:
        raise ConfigError(
            f"data.builtin: unknown data set {name!r}; choose one of {', '.join(BUILTIN_DATASETS)}"
        )


def _parse_models(table: Mapping[str, object], base: Path, state_dir: Path) -> SiteModelOptions:
    """``[models]``: ``device`` (auto, cpu or cuda), ``cache_dir`` for dequantized weights
    (default: the state folder's ``model-cache``) and ``[models.folders]``, the folder of each
    base model by the name studies pin it under (the built-in models need none)."""
    _reject_unknown(table, _MODELS_KEYS, prefix="models.")
    device = _text(table, "device", default="auto", prefix="models.")
    if device not in _DEVICES:
        raise ConfigError(f"models.device: must be one of {', '.join(_DEVICES)}, got {device!r}")
    folders = _table(table, "folders", prefix="models.", required=False)
    paths = {}
    for name in folders:
        folder = base / _text(folders, name, prefix="models.folders.")
        if not folder.is_dir():
            raise ConfigError(f"models.folders.{name}: {folder} is not a folder")
        paths[name] = folder
    cache = table.get("cache_dir")
    return SiteModelOptions(
        folders=paths,
        device=device,
        cache_dir=base / _text(table, "cache_dir", prefix="models.")
        if cache is not None
        else state_dir / "model-cache",
    )


def _parse_policy(table: Mapping[str, object]) -> Policy:
    _reject_unknown(table, _POLICY_KEYS, prefix="policy.")
    if "approved_studies" not in table:
        raise ConfigError(
            'policy.approved_studies: missing; list the studies the data owner approved, or ["*"] for '
            "any study the server records as approved by this institution"
        )
    privacy = _table(table, "privacy", prefix="policy.", required=False)
    filters = _table(table, "filters", prefix="policy.", required=False)
    summaries = _table(table, "summaries", prefix="policy.", required=False)
    analytics = _table(table, "analytics", prefix="policy.", required=False)
    return Policy(
        approved_studies=_names(table, "approved_studies", allow_numbers=True),
        max_rounds=_integer(table, "max_rounds", default=100, minimum=1, prefix="policy."),
        max_epochs=_integer(table, "max_epochs", default=10, minimum=1, prefix="policy."),
        allowed_model_kinds=_names(table, "allowed_model_kinds", default=_DEFAULT_MODEL_KINDS),
        allowed_strategies=_names(table, "allowed_strategies", default=(WILDCARD,)),
        privacy=_parse_privacy(privacy),
        filters=_parse_filters(filters),
        summaries=_parse_summaries(summaries),
        analytics=_parse_analytics(analytics),
    )


def _parse_analytics(table: Mapping[str, object]) -> AnalyticsPolicy:
    prefix = "policy.analytics."
    _reject_unknown(table, _ANALYTICS_KEYS, prefix=prefix)
    epsilon = table.get("max_epsilon", math.inf)
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not epsilon >= 0:
        raise ConfigError(f"{prefix}max_epsilon: must be a number >= 0 (0: no noised query; inf: no limit)")
    return AnalyticsPolicy(
        min_count=_integer(table, "min_count", default=5, minimum=1, prefix=prefix),
        require_secure_aggregation=_boolean(table, "require_secure_aggregation", prefix=prefix),
        max_epsilon=float(epsilon),
        allow_evaluation=_boolean(table, "allow_evaluation", prefix=prefix, default=True),
    )


def _parse_summaries(table: Mapping[str, object]) -> SummaryPolicy:
    _reject_unknown(table, _SUMMARY_KEYS, prefix="policy.summaries.")
    return SummaryPolicy(
        min_rows=_integer(table, "min_rows", default=10, minimum=1, prefix="policy.summaries."),
        require_secure_aggregation=_boolean(table, "require_secure_aggregation", prefix="policy.summaries."),
    )


def _parse_privacy(table: Mapping[str, object]) -> PrivacyPolicy:
    _reject_unknown(table, _PRIVACY_KEYS, prefix="policy.privacy.")
    epsilon = table.get("max_epsilon", math.inf)
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not epsilon > 0:
        raise ConfigError("policy.privacy.max_epsilon: must be a number > 0 (inf for no limit)")
    return PrivacyPolicy(
        require_secure_aggregation=_boolean(table, "require_secure_aggregation", prefix="policy.privacy."),
        require_differential_privacy=_boolean(
            table, "require_differential_privacy", prefix="policy.privacy."
        ),
        max_epsilon=float(epsilon),
    )


def _parse_filters(table: Mapping[str, object]) -> UpdateFilters:
    _reject_unknown(table, _FILTER_KEYS, prefix="policy.filters.")
    norm = table.get("clip_update_norm")
    if norm is not None and (
        isinstance(norm, bool) or not isinstance(norm, int | float) or not 0 < norm < math.inf
    ):
        raise ConfigError("policy.filters.clip_update_norm: must be a finite number > 0")
    layers = table.get("exclude_layers", [])
    if not isinstance(layers, list) or not all(isinstance(name, str) and name.strip() for name in layers):
        raise ConfigError("policy.filters.exclude_layers: must be a list of tensor names")
    return UpdateFilters(
        clip_update_norm=None if norm is None else float(norm),
        exclude_layers=tuple(name.strip() for name in layers),
    )


def _boolean(table: Mapping[str, object], key: str, *, prefix: str, default: bool = False) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{prefix}{key}: must be true or false")
    return value


# --- small typed readers; each error names the key ------------------------------------


def _reject_unknown(table: Mapping[str, object], allowed: set[str], *, prefix: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        names = ", ".join(prefix + key for key in unknown)
        raise ConfigError(f"{names}: unknown key(s); allowed here: {', '.join(sorted(allowed))}")


def _table(
    document: Mapping[str, object], key: str, *, prefix: str = "", required: bool = True
) -> Mapping[str, object]:
    value = document.get(key)
    if value is None and not required:
        return {}
    if value is None:
        raise ConfigError(f"{prefix}{key}: missing table [{prefix}{key}]")
    if not isinstance(value, dict):
        raise ConfigError(f"{prefix}{key}: must be a table")
    return value


def _text(
    table: Mapping[str, object],
    key: str,
    *,
    default: str | None = None,
    prefix: str = "",
    allow_empty: bool = False,
) -> str:
    value = table.get(key, default)
    if value is None:
        raise ConfigError(f"{prefix}{key}: missing")
    if not isinstance(value, str):
        raise ConfigError(f"{prefix}{key}: must be a string")
    if not value.strip() and not allow_empty:
        raise ConfigError(f"{prefix}{key}: must not be empty")
    return value.strip()


def _integer(
    table: Mapping[str, object],
    key: str,
    *,
    default: int,
    minimum: int,
    maximum: int | None = None,
    prefix: str = "",
) -> int:
    value = table.get(key, default)
    upper = math.inf if maximum is None else maximum
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= upper:
        bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ConfigError(f"{prefix}{key}: must be an integer {bounds}, got {value!r}")
    return value


def _names(
    table: Mapping[str, object], key: str, *, default: tuple[str, ...] = (), allow_numbers: bool = False
) -> tuple[str, ...]:
    value = table.get(key, list(default))
    allowed_types: tuple[type, ...] = (str, int) if allow_numbers else (str,)
    if not isinstance(value, list) or not all(
        isinstance(item, allowed_types) and not isinstance(item, bool) for item in value
    ):
        what = "strings or integer ids" if allow_numbers else "strings"
        raise ConfigError(f"policy.{key}: must be a list of {what}")
    return tuple(str(item).strip() for item in value)


def _existing_file(path: Path, key: str) -> Path:
    if not path.is_file():
        raise ConfigError(f"{key}: {path} is not a readable file")
    return path
