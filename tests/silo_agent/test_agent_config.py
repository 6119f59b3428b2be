"""The configuration file: defaults, relative paths and errors that name the key."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from silo_agent.config import DataSourceKind, check_server_url, load_config
from silo_agent.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "agent" / "agent.example.toml"

MINIMAL = """
server_url = "https://fl.example.org"
[data]
builtin = "breast_cancer"
[policy]
approved_studies = ["*"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_the_shipped_example_is_valid():
    config = load_config(EXAMPLE)
    assert config.server_url == "https://fl.example.org"
    assert config.data.kind is DataSourceKind.CSV
    assert config.data.csv_path == EXAMPLE.parent / "data" / "site.csv"
    assert config.policy.privacy.max_epsilon == math.inf
    assert config.policy.privacy.require_secure_aggregation is False
    assert config.policy.privacy.require_differential_privacy is False
    assert config.policy.filters.clip_update_norm is None
    assert config.policy.filters.exclude_layers == ()


def test_the_site_filters_are_read(tmp_path):
    text = MINIMAL + '[policy.filters]\nclip_update_norm = 2.5\nexclude_layers = ["linear.bias"]\n'
    filters = load_config(write(tmp_path, text)).policy.filters
    assert (filters.clip_update_norm, filters.exclude_layers) == (2.5, ("linear.bias",))


def test_defaults_and_relative_paths(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert config.credential_file == tmp_path / "credential.json"
    assert config.state_dir == tmp_path / "state"
    assert config.ca_bundle is None
    assert config.poll_wait_seconds == 25
    assert config.policy.max_rounds == 100
    assert config.policy.max_epochs == 10
    assert config.policy.allowed_strategies == ("*",)
    assert "sklearn_logistic" in config.policy.allowed_model_kinds


def test_approved_studies_may_mix_names_and_ids(tmp_path):
    text = MINIMAL.replace('approved_studies = ["*"]', 'approved_studies = ["pilot", 4]')
    assert load_config(write(tmp_path, text)).policy.approved_studies == ("pilot", "4")


def test_builtin_rows_resolve_against_the_config_folder(tmp_path):
    text = MINIMAL.replace('builtin = "breast_cancer"', 'builtin = "breast_cancer"\nrows = "share/rows.json"')
    assert load_config(write(tmp_path, text)).data.rows_file == tmp_path / "share" / "rows.json"


ERRORS = {
    "missing server_url": (
        MINIMAL.replace('server_url = "https://fl.example.org"', ""),
        "server_url: missing",
    ),
    "missing data": (MINIMAL.replace('[data]\nbuiltin = "breast_cancer"', ""), "data: missing"),
    "missing approvals": (
        MINIMAL.replace('approved_studies = ["*"]', ""),
        "policy.approved_studies: missing",
    ),
    "missing policy": (MINIMAL.replace('[policy]\napproved_studies = ["*"]', ""), "policy: missing"),
    "typo in policy": (MINIMAL + "max_epoch = 3\n", "policy.max_epoch: unknown key"),
    "typo at top": ("poll_wait = 3\n" + MINIMAL, "poll_wait: unknown key"),
    "poll wait too long": (
        "poll_wait_seconds = 31\n" + MINIMAL,
        "poll_wait_seconds: must be an integer in 0..30",
    ),
    "zero rounds": (MINIMAL + "max_rounds = 0\n", "policy.max_rounds: must be an integer >= 1"),
    "epochs as text": (MINIMAL + 'max_epochs = "5"\n', "policy.max_epochs"),
    "both data sources": (MINIMAL.replace("[data]", '[data]\npath = "a.csv"'), "exactly one of data.path"),
    "rows with csv": (
        MINIMAL.replace('builtin = "breast_cancer"', 'path = "a.csv"\nrows = "r.json"'),
        "data.rows",
    ),
    "unknown builtin": (MINIMAL.replace("breast_cancer", "mnist"), "data.builtin: unknown data set"),
    "kinds not a list": (MINIMAL + 'allowed_model_kinds = "logistic"\n', "policy.allowed_model_kinds"),
    "missing ca bundle": ('ca_bundle = "nowhere.pem"\n' + MINIMAL, "ca_bundle:"),
    "privacy typo": (MINIMAL + "[policy.privacy]\nmax_epsilons = 1.0\n", "policy.privacy.max_epsilons"),
    "negative epsilon": (MINIMAL + "[policy.privacy]\nmax_epsilon = -1.0\n", "policy.privacy.max_epsilon"),
    "dp demand not a bool": (
        MINIMAL + "[policy.privacy]\nrequire_differential_privacy = 1\n",
        "policy.privacy.require_differential_privacy",
    ),
    "filters typo": (MINIMAL + "[policy.filters]\nclip_norm = 1.0\n", "policy.filters.clip_norm"),
    "zero clip": (MINIMAL + "[policy.filters]\nclip_update_norm = 0\n", "policy.filters.clip_update_norm"),
    "layers not names": (
        MINIMAL + "[policy.filters]\nexclude_layers = [1]\n",
        "policy.filters.exclude_layers",
    ),
    "not toml": ("server_url = ", "not valid TOML"),
    "empty state_dir": ('state_dir = ""\n' + MINIMAL, "state_dir: must not be empty"),
}


@pytest.mark.parametrize(("text", "message"), list(ERRORS.values()), ids=list(ERRORS))
def test_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(write(tmp_path, text))


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    "url",
    [
        "http://fl.example.org",
        "http://10.0.0.5:8000",
        "http://127.0.0.1.example.com",
        "http://[fe80::1]:8000",
    ],
)
def test_plain_http_to_another_host_is_refused(url):
    with pytest.raises(ConfigError, match="only allowed to a loopback address"):
        check_server_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000",
        "http://127.3.2.1",
        "http://[::1]:8000/",
        "http://localhost:8000",
        "http://LOCALHOST",
    ],
)
def test_plain_http_to_a_loopback_address_is_allowed(url):
    assert check_server_url(url) == url.rstrip("/")


@pytest.mark.parametrize(
    "url", ["ftp://fl.example.org", "fl.example.org", "https://user:pw@fl.example.org", "https://"]
)
def test_malformed_server_urls_are_refused(url):
    with pytest.raises(ConfigError, match="server_url"):
        check_server_url(url)


def test_the_error_for_http_names_the_key_in_the_file(tmp_path):
    text = MINIMAL.replace("https://fl.example.org", "http://fl.example.org")
    with pytest.raises(ConfigError, match="server_url: plain http://"):
        load_config(write(tmp_path, text))


def test_model_settings_default_to_the_built_in_models_on_any_device(tmp_path):
    models = load_config(write(tmp_path, MINIMAL)).models
    assert (models.device, dict(models.folders)) == ("auto", {})
    assert models.cache_dir == tmp_path / "state" / "model-cache"
    assert "lora_encoder" not in load_config(write(tmp_path, MINIMAL)).policy.allowed_model_kinds  # opt in


def test_model_folders_are_read_relative_to_the_file(tmp_path):
    (tmp_path / "models" / "clinical").mkdir(parents=True)
    text = (
        MINIMAL
        + '[models]\ndevice = "cpu"\ncache_dir = "cache"\n'
        + '[models.folders]\n"clinical-8b" = "models/clinical"\n'
    )
    models = load_config(write(tmp_path, text)).models
    assert models.device == "cpu"
    assert models.cache_dir == tmp_path / "cache"
    assert dict(models.folders) == {"clinical-8b": tmp_path / "models" / "clinical"}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[models]\ndevice = "tpu"\n', "models.device: must be one of auto, cpu, cuda"),
        ("[models]\ngpu = true\n", "models.gpu: unknown key"),
        ('[models.folders]\n"x" = "missing"\n', "models.folders.x: .* is not a folder"),
        ('[models.folders]\n"x" = 3\n', "models.folders.x: must be a string"),
    ],
)
def test_bad_model_settings_name_the_key(tmp_path, table, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, MINIMAL + table))
