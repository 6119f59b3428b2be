"""What can be checked of deploy/ without Docker, systemd or a TLS proxy running.

The process definitions (Procfile, systemd units, compose, the image's entry point) must
agree with the code: the modules they name exist, the queues they consume are the queues
the settings route to, the variables they document are the variables the code reads.
"""

from __future__ import annotations

import ast
import configparser
import importlib.util
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from django.core.exceptions import ImproperlyConfigured
from service_support import missing_on_this_machine

from fedplatform import env as environment

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PLATFORM = REPO / "platform"
VENV_BIN = Path(sys.executable).parent
PROCESSES = ("web", "worker", "aggregator", "beat")
UNITS = {name: DEPLOY / "systemd" / f"fedhealth-{name}.service" for name in PROCESSES}
ENV_EXAMPLE = DEPLOY / "env.production.example"
ENV_HELPERS_WITH_A_NAME = ("name",)


# --- helpers -----------------------------------------------------------------------------------


def load_gunicorn_config() -> dict[str, object]:
    """Execute deploy/gunicorn.conf.py the way gunicorn does: as a module with __file__ set."""
    path = DEPLOY / "gunicorn.conf.py"
    namespace: dict[str, object] = {"__file__": str(path), "__name__": "gunicorn_config"}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace


def procfile() -> dict[str, list[str]]:
    commands: dict[str, list[str]] = {}
    for line in (DEPLOY / "Procfile").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, command = line.partition(":")
        assert name not in commands, f"process {name} defined twice"
        commands[name.strip()] = shlex.split(command)
    return commands


def option(arguments: list[str], flag: str) -> str:
    assert flag in arguments, f"{flag} missing from {arguments}"
    return arguments[arguments.index(flag) + 1]


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(UNITS[name])
    return parser


def env_file_entries(path: Path) -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, separator, value = line.partition("=")
            assert separator, f"not KEY=value: {line!r}"
            assert key not in entries, f"{key} given twice"
            entries[key] = value
    return entries


def environment_names_read_by(path: Path) -> set[str]:
    """Names read from os.environ, directly or through a helper taking the name first."""
    tree = ast.parse(path.read_text())
    helpers = {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and node.args.args
        and node.args.args[0].arg in ENV_HELPERS_WITH_A_NAME
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Subscript)
            and ast.unparse(node.value) == "os.environ"
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            names.add(node.slice.value)
        if not isinstance(node, ast.Call) or not node.args:
            continue
        callee = ast.unparse(node.func)
        first = node.args[0]
        if (callee in {"os.environ.get", "os.getenv"} or callee in helpers) and (
            isinstance(first, ast.Constant) and isinstance(first.value, str)
        ):
            names.add(first.value)
    return names


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", DEPLOY / "docker" / "healthcheck.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- gunicorn ----------------------------------------------------------------------------------


def test_gunicorn_config_uses_threads_and_outlasts_the_long_poll(monkeypatch, settings):
    for name in ("FEDHEALTH_BIND", "FEDHEALTH_WEB_WORKERS", "FEDHEALTH_WEB_THREADS"):
        monkeypatch.delenv(name, raising=False)
    config = load_gunicorn_config()
    long_poll = settings.FEDHEALTH_LONG_POLL_MAX_SECONDS
    assert config["worker_class"] == "gthread"
    assert config["threads"] >= 8
    assert config["workers"] >= 2
    assert config["timeout"] > long_poll
    assert config["graceful_timeout"] > long_poll
    assert config["LONG_POLL_MAX_SECONDS"] == long_poll
    assert config["preload_app"] is False
    assert config["bind"] == ["127.0.0.1:8000"]
    assert config["forwarded_allow_ips"]


def test_gunicorn_keepalive_stays_short_and_above_nginxs(monkeypatch):
    monkeypatch.delenv("FEDHEALTH_BODY_TIMEOUT_SECONDS", raising=False)
    config = load_gunicorn_config()
    upstream_keepalive = nginx_directives()["keepalive_timeout"]
    assert len(upstream_keepalive) == 1
    assert int(upstream_keepalive[0].rstrip("s")) < int(config["keepalive"]) <= 10
    assert config["BODY_TIMEOUT_SECONDS"] == 15
    assert callable(config["pre_request"])


def test_gunicorn_frees_a_thread_whose_request_body_stalls(tmp_path):
    """A body shorter than its Content-Length, sent to gunicorn directly: a JSON 400 once
    nothing more arrives for FEDHEALTH_BODY_TIMEOUT_SECONDS, not a thread held until the
    client hangs up (without the hook the read below would wait out its 60 s and fail)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "FEDHEALTH_DATA_DIR": str(tmp_path),
        "FEDHEALTH_ENV": "development",
        "FEDHEALTH_BIND": f"127.0.0.1:{port}",
        "FEDHEALTH_WEB_WORKERS": "1",
        "FEDHEALTH_WEB_THREADS": "2",
        "FEDHEALTH_BODY_TIMEOUT_SECONDS": "2",
    }
    with (tmp_path / "gunicorn.log").open("wb") as log:
        server = subprocess.Popen(
            [str(VENV_BIN / "gunicorn"), "--config", "deploy/gunicorn.conf.py"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "gunicorn.log").read_text()[-2000:]
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=60)
                break
            except OSError:
                assert time.monotonic() < deadline, "gunicorn did not start listening"
                time.sleep(0.2)
        with client:
            client.sendall(
                b"POST /api/agent/v1/enroll HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"token": '
            )
            answer = b""
            while chunk := client.recv(65536):  # until gunicorn closes the connection
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400"), answer[:500]
        assert b"incomplete_body" in answer
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_gunicorn_config_changes_into_platform_and_names_the_wsgi_module():
    config = load_gunicorn_config()
    assert Path(str(config["chdir"])) == PLATFORM
    module, _, attribute = str(config["wsgi_app"]).partition(":")
    assert (PLATFORM / Path(*module.split("."))).with_suffix(".py").is_file()
    assert attribute == "application"
    assert not (PLATFORM / "__init__.py").exists(), "platform/ must never become a package"


def test_gunicorn_access_log_leaves_out_credentials():
    log_format = str(load_gunicorn_config()["access_log_format"])
    assert "authorization" not in log_format.lower()
    assert "cookie" not in log_format.lower()
    # %(u)s is decoded from the Authorization header; %(r)s, %(q)s and %(f)s carry query strings.
    for atom in ("%(u)s", "%(r)s", "%(q)s", "%(f)s"):
        assert atom not in log_format
    headers = re.findall(r"%\(\{([^}]+)\}i\)s", log_format)
    assert set(headers) <= {"x-forwarded-for", "x-request-id"}
    assert "%(s)s" in log_format


def test_gunicorn_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("FEDHEALTH_BIND", "10.0.0.5:9000")
    monkeypatch.setenv("FEDHEALTH_WEB_WORKERS", "3")
    monkeypatch.setenv("FEDHEALTH_WEB_THREADS", "8")
    config = load_gunicorn_config()
    assert config["bind"] == ["10.0.0.5:9000"]
    assert (config["workers"], config["threads"]) == (3, 8)
    monkeypatch.setenv("FEDHEALTH_WEB_WORKERS", "0")
    with pytest.raises(ValueError, match="FEDHEALTH_WEB_WORKERS"):
        load_gunicorn_config()


def test_gunicorn_accepts_the_config_and_imports_the_app(tmp_path):
    """gunicorn's own validation of every setting, and the WSGI app importable from chdir."""
    result = subprocess.run(
        [str(VENV_BIN / "gunicorn"), "--config", "deploy/gunicorn.conf.py", "--check-config"],
        cwd=REPO,
        env={**os.environ, "FEDHEALTH_DATA_DIR": str(tmp_path), "FEDHEALTH_ENV": "development"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]


# --- Procfile and Celery -----------------------------------------------------------------------


def test_procfile_defines_the_four_processes():
    commands = procfile()
    assert set(commands) == set(PROCESSES)
    web = commands["web"]
    assert web[0] == "gunicorn"
    assert (REPO / option(web, "--config")) == DEPLOY / "gunicorn.conf.py"
    assert web[-1] == "fedplatform.wsgi"
    assert (PLATFORM / "fedplatform" / "wsgi.py").is_file()


@pytest.mark.parametrize("name", ["worker", "aggregator", "beat"])
def test_procfile_celery_commands_load_the_project_app(name):
    command = procfile()[name]
    assert command[0] == "celery"
    assert (REPO / option(command, "--workdir")) == PLATFORM
    assert option(command, "-A") == "fedplatform"
    assert (PLATFORM / "fedplatform" / "celery.py").is_file()


def test_workers_use_threads_never_prefork():
    commands = procfile()
    for name in ("worker", "aggregator"):
        assert commands[name][commands[name].index("-A") + 2] == "worker"
        assert option(commands[name], "--pool") == "threads", name


def test_worker_queues_cover_every_routed_queue(settings):
    commands = procfile()
    default_queue = getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", "celery")
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    aggregation = settings.CELERY_TASK_ROUTES["training.tasks.round_aggregate_task"]["queue"]
    worker_queues = set(option(commands["worker"], "--queues").split(","))
    aggregator_queues = set(option(commands["aggregator"], "--queues").split(","))
    assert aggregator_queues == {aggregation} == {"aggregation"}
    assert default_queue in worker_queues
    assert aggregation not in worker_queues, "aggregation has its own workers"
    assert routed | {default_queue} <= worker_queues | aggregator_queues


def test_routed_and_scheduled_tasks_exist(settings):
    tasks = dict(settings.CELERY_TASK_ROUTES)
    tasks.update({entry["task"]: {} for entry in settings.CELERY_BEAT_SCHEDULE.values()})
    for dotted in tasks:
        module_name, _, function = dotted.rpartition(".")
        module = importlib.import_module(module_name)
        assert callable(getattr(module, function, None)), dotted


def test_beat_keeps_its_schedule_in_the_data_folder():
    command = procfile()["beat"]
    assert command[command.index("-A") + 2] == "beat"
    assert option(command, "--schedule").startswith("${FEDHEALTH_DATA_DIR")


def test_celery_finds_the_app_with_workdir_platform(tmp_path):
    """The Procfile's `celery --workdir platform -A fedplatform` loads the Django settings."""
    result = subprocess.run(
        [str(VENV_BIN / "celery"), "--workdir", "platform", "-A", "fedplatform", "report"],
        cwd=REPO,
        env={**os.environ, "FEDHEALTH_DATA_DIR": str(tmp_path), "FEDHEALTH_ENV": "development"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fedplatform.settings" in result.stdout or "CELERY_TASK_ROUTES" in result.stdout
    assert "aggregation" in result.stdout
    # Celery's report calls the standard library's platform module: nothing shadows it.
    assert re.search(r"platform -> system:\w+", result.stdout)


# --- systemd -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROCESSES)
def test_systemd_unit_parses_and_is_hardened(name):
    parsed = unit(name)
    assert {"Unit", "Service", "Install"} <= set(parsed.sections())
    service = parsed["Service"]
    assert service.get("ExecStart")
    assert service.get("User") not in {None, "", "root", "0"}
    assert service.get("Restart") == "on-failure"
    assert service.get("EnvironmentFile") == "/etc/fedhealth/env"
    assert service.get("NoNewPrivileges") == "yes"
    assert service.get("ProtectSystem") == "strict"
    assert parsed["Install"].get("WantedBy") == "multi-user.target"


@pytest.mark.parametrize("name", PROCESSES)
def test_systemd_unit_runs_what_the_procfile_runs(name):
    exec_start = shlex.split(unit(name)["Service"]["ExecStart"])
    procfile_command = procfile()[name]
    assert Path(exec_start[0]).name == procfile_command[0]
    assert Path(exec_start[0]).is_absolute()
    for flag in ("--queues", "--pool", "--concurrency", "-A"):
        if flag in procfile_command:
            assert option(exec_start, flag) == option(procfile_command, flag), flag
    if name == "web":
        assert option(exec_start, "--config").endswith("/deploy/gunicorn.conf.py")
    else:
        assert option(exec_start, "--workdir").endswith("/platform")
    # "%h" is a systemd specifier (the user's home), not Celery's host name: use %H or %%h.
    assert not re.search(r"(?<!%)%h", unit(name)["Service"]["ExecStart"])


# --- environment -------------------------------------------------------------------------------


def test_env_example_lists_every_variable_the_code_reads():
    read_by_settings = environment_names_read_by(PLATFORM / "fedplatform" / "env.py")
    read_by_gunicorn = environment_names_read_by(DEPLOY / "gunicorn.conf.py")
    # The parser itself must work, or the check below would pass on nothing.
    assert {"SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "ALLOWED_HOSTS"} <= read_by_settings
    assert {"FEDHEALTH_ENV", "FEDHEALTH_DEBUG", "FEDHEALTH_BEHIND_TLS_PROXY"} <= read_by_settings
    assert "FEDHEALTH_BIND" in read_by_gunicorn
    listed = set(env_file_entries(ENV_EXAMPLE))
    assert read_by_settings - listed == set()
    assert read_by_gunicorn - listed == set()


def test_env_example_comments_every_variable():
    lines = ENV_EXAMPLE.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.strip() and not line.startswith("#"):
            above = lines[number - 1]
            assert above.startswith("#") or "=" in above, f"no comment above {line!r}"


def test_env_example_fails_validation_until_filled_in(monkeypatch, tmp_path):
    entries = env_file_entries(ENV_EXAMPLE)
    for name in environment_names_read_by(PLATFORM / "fedplatform" / "env.py"):
        monkeypatch.delenv(name, raising=False)
    for key, value in entries.items():
        monkeypatch.setenv(key, value)
    assert entries["FEDHEALTH_ENV"] == "production"
    for required in ("SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "ALLOWED_HOSTS"):
        assert entries[required] == "", f"{required} must be a placeholder that fails validation"
    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY"):
        environment.load()

    monkeypatch.setenv("SECRET_KEY", "x" * 50)
    monkeypatch.setenv("DATABASE_URL", "postgres://fedhealth:pw@127.0.0.1:5432/fedhealth")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("ALLOWED_HOSTS", "fl.example.org")
    monkeypatch.setenv("FEDHEALTH_DATA_DIR", str(tmp_path))
    loaded = environment.load()
    assert loaded.production
    assert not loaded.debug
    assert loaded.behind_tls_proxy
    assert loaded.log_level == "INFO"


def test_the_cache_is_shared_by_processes_and_chosen_by_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDHEALTH_DATA_DIR", str(tmp_path / "data dir"))
    monkeypatch.delenv("FEDHEALTH_CACHE_URL", raising=False)
    embedded = environment.cache_settings(environment.load().cache_url)
    assert embedded["BACKEND"] == "django.core.cache.backends.filebased.FileBasedCache"
    assert embedded["LOCATION"] == str(tmp_path / "data dir" / "cache")
    monkeypatch.setenv("FEDHEALTH_CACHE_URL", "redis://127.0.0.1:6379/1")
    redis = environment.cache_settings(environment.load().cache_url)
    assert redis == {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:6379/1",
        "KEY_PREFIX": "fedhealth",
    }
    for wrong in ("memcached://127.0.0.1:11211", "file://relative/folder", "locmem://"):
        monkeypatch.setenv("FEDHEALTH_CACHE_URL", wrong)
        with pytest.raises(ImproperlyConfigured, match="FEDHEALTH_CACHE_URL"):
            environment.load()


def test_proxy_count_and_long_poll_shares_are_validated(monkeypatch):
    for name in (
        "FEDHEALTH_TRUSTED_PROXY_COUNT",
        "FEDHEALTH_LONG_POLL_PER_CREDENTIAL",
        "FEDHEALTH_LONG_POLL_PER_PROCESS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FEDHEALTH_WEB_THREADS", "12")
    loaded = environment.load()
    assert (loaded.trusted_proxy_count, loaded.long_poll_per_credential, loaded.long_poll_per_process) == (
        0,
        2,
        6,
    )
    monkeypatch.setenv("FEDHEALTH_TRUSTED_PROXY_COUNT", "1")
    assert environment.load().trusted_proxy_count == 1
    for name, wrong in (
        ("FEDHEALTH_TRUSTED_PROXY_COUNT", "-1"),
        ("FEDHEALTH_TRUSTED_PROXY_COUNT", "one"),
        ("FEDHEALTH_LONG_POLL_PER_CREDENTIAL", "0"),
        ("FEDHEALTH_LONG_POLL_PER_PROCESS", "0"),
    ):
        monkeypatch.setenv(name, wrong)
        with pytest.raises(ImproperlyConfigured, match=name):
            environment.load()
        monkeypatch.delenv(name)


# --- nginx -------------------------------------------------------------------------------------


def nginx_directives() -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in (DEPLOY / "nginx" / "fedhealth.conf").read_text().splitlines():
        statement = line.split("#", 1)[0].strip()
        if statement.endswith(";"):
            name, _, value = statement[:-1].partition(" ")
            directives.setdefault(name, []).append(value.strip())
    return directives


def nginx_size(value: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    return int(value[:-1]) * units[value[-1].lower()] if value[-1].isalpha() else int(value)


def test_nginx_allows_model_uploads_and_long_polls(settings):
    directives = nginx_directives()
    # Small bodies by default; model-sized ones only on the update upload route.
    default_size, upload_size = directives["client_max_body_size"]
    assert nginx_size(default_size) < settings.FEDHEALTH_MAX_UPLOAD_BYTES
    assert nginx_size(upload_size) >= settings.FEDHEALTH_MAX_UPLOAD_BYTES
    assert "rounds/[0-9]+/(update|secagg/masked)" in (DEPLOY / "nginx" / "fedhealth.conf").read_text()
    assert all(
        int(t.rstrip("s")) > settings.FEDHEALTH_LONG_POLL_MAX_SECONDS
        for t in directives["proxy_read_timeout"]
    )
    assert any("Strict-Transport-Security" in value for value in directives["add_header"])
    assert "X-Forwarded-Proto https" in [" ".join(v.split()) for v in directives["proxy_set_header"]]
    assert any(value.startswith("443 ssl") for value in directives["listen"])


def upload_routes() -> dict[str, type]:
    """Every route of the agent API that takes a multipart upload, with a sample path."""
    from django.urls import get_resolver

    from agentapi.apis import UploadView

    routes = {}
    for pattern in get_resolver().url_patterns:
        for inner in getattr(pattern, "url_patterns", []):
            view = getattr(inner.callback, "view_class", None)
            if view is not None and issubclass(view, UploadView):
                path = f"/{pattern.pattern}{inner.pattern}".replace("<int:round_id>", "17")
                routes[path] = view
    return routes


def test_every_upload_route_takes_the_largest_model_in_nginx(settings):
    """nginx sizes each upload route from the largest model a study may use: a masked update
    under secure aggregation is twice a plain one (it was 413 above 1.3M parameters)."""
    from federation.types import ModelSpec, TensorSpec

    largest_model = ModelSpec((TensorSpec("w", (settings.FEDHEALTH_MAX_MODEL_PARAMETERS,), "F32"),))
    routes = upload_routes()
    assert set(routes) == {"/api/agent/v1/rounds/17/update", "/api/agent/v1/rounds/17/secagg/masked"}
    regex_blocks = {match: block for match, block in nginx_locations().items() if match.startswith("~ ")}
    for path, view in routes.items():
        matching = [block for match, block in regex_blocks.items() if re.search(match[2:], path)]
        assert len(matching) == 1, f"no nginx location of its own for {path}"
        (size,) = [s.split()[1] for s in matching[0] if s.startswith("client_max_body_size")]
        assert nginx_size(size) >= view.largest_body(largest_model), path
        assert view.tensors_limit(largest_model.nbytes) <= settings.FEDHEALTH_MAX_UPLOAD_BYTES, path


def test_nginx_limits_connections_per_address_and_long_polls_per_address():
    directives = nginx_directives()
    zones = {
        value.split()[1].removeprefix("zone=").split(":")[0]: value.split()[0]
        for value in directives["limit_conn_zone"]
    }
    assert zones == {
        "fedhealth_per_address": "$binary_remote_addr",
        "fedhealth_long_polls": "$binary_remote_addr",
    }
    assert directives["limit_conn_status"] == ["429"]
    text = (DEPLOY / "nginx" / "fedhealth.conf").read_text()
    server = text[text.index("listen 443") :]
    # The server-wide limit, and the long-poll route repeating it (limit_conn is not inherited
    # by a block with one of its own) beside its own, smaller one.
    assert re.search(r"\n    limit_conn fedhealth_per_address \d+;", server)
    work = re.search(r"location = /api/agent/v1/work \{(.*?)\n    \}", server, re.DOTALL)
    assert work, "no location for the agent's long poll"
    limits = dict(re.findall(r"limit_conn (\w+) (\d+);", work.group(1)))
    assert set(limits) == {"fedhealth_per_address", "fedhealth_long_polls"}
    assert int(limits["fedhealth_long_polls"]) < int(limits["fedhealth_per_address"])
    assert "proxy_set_header X-Forwarded-For   $remote_addr;" in work.group(1)
    assert "proxy_pass http://fedhealth_web;" in work.group(1)


def test_nginx_serves_static_from_static_root_and_proxies_to_gunicorn():
    directives = nginx_directives()
    data_dir = env_file_entries(ENV_EXAMPLE)["FEDHEALTH_DATA_DIR"]
    assert directives["alias"] == [f"{data_dir}/static/"]  # STATIC_ROOT = DATA_DIR / "static"
    bind = env_file_entries(ENV_EXAMPLE)["FEDHEALTH_BIND"]
    assert f"{bind}" in directives["server"]


def nginx_locations() -> dict[str, list[str]]:
    """Each ``location`` block (by its match, e.g. ``= /login/``): its statements, in order,
    with their spacing normalized. The HTTPS server comes last, so its blocks win."""
    locations: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in (DEPLOY / "nginx" / "fedhealth.conf").read_text().splitlines():
        statement = " ".join(line.split("#", 1)[0].split())
        opening = re.fullmatch(r"location (.+) \{", statement)
        if opening:
            assert current is None, "nested location blocks"
            current = locations[opening.group(1)] = []
        elif statement == "}":
            current = None
        elif current is not None and statement:
            current.append(statement.rstrip(";"))
    return locations


def test_nginx_throttles_both_sign_in_pages_per_address():
    (zone_definition,) = nginx_directives()["limit_req_zone"]
    key, zone, rate = zone_definition.split()
    assert key == "$binary_remote_addr"  # per client address
    zone_name = zone.removeprefix("zone=").split(":")[0]
    assert re.fullmatch(r"rate=\d+r/m", rate)
    locations = nginx_locations()
    main = locations["/"]
    proxying = [s for s in main if s.startswith(("proxy_pass", "proxy_http_version", "proxy_set_header"))]
    assert len([s for s in proxying if s.startswith("proxy_set_header")]) >= 5
    for page in ("/login/", "/admin/login/"):
        block = locations[f"= {page}"]
        limits = [s for s in block if s.startswith("limit_req ")]
        assert limits, f"{page} is not throttled"
        assert all(f"zone={zone_name}" in limit.split() for limit in limits)
        assert "limit_req_status 429" in block
        # proxy_set_header is not inherited into a block that has its own: the same headers
        assert [s for s in block if s in proxying] == proxying, page
        assert [s for s in block if s.startswith("proxy_set_header")] == [
            s for s in main if s.startswith("proxy_set_header")
        ]
        # an add_header here would drop the server's HSTS header (not inherited either)
        assert not any(s.startswith("add_header") for s in block), page
    assert not any(s.startswith("limit_req") for s in main), "the throttle is for the sign-in pages only"


def test_nginx_config_passes_nginx_t(tmp_path):
    if not (shutil.which("nginx") and shutil.which("openssl")):
        missing_on_this_machine("needs nginx and openssl (make test-deps installs them)")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=t"),
            *("-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")),
        ],
        check=True,
        capture_output=True,
    )
    site = (DEPLOY / "nginx" / "fedhealth.conf").read_text()
    site = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {tmp_path / 'cert.pem'};", site)
    site = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {tmp_path / 'key.pem'};", site)
    (tmp_path / "site.conf").write_text(site)
    temp_paths = " ".join(f"{kind}_temp_path {tmp_path / kind};" for kind in ("client_body", "proxy"))
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path / 'nginx.pid'}; error_log {tmp_path / 'error.log'}; events {{}}\n"
        f"http {{ access_log off; {temp_paths} include {tmp_path / 'site.conf'}; }}\n"
    )
    result = subprocess.run(
        ["nginx", "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --- container ---------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            instructions.append((keyword.upper(), " ".join(rest.split())))
    return instructions


def test_dockerfile_pins_cpu_torch_before_the_project():
    runs = [rest for keyword, rest in dockerfile_instructions() if keyword == "RUN"]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    (torch_pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("torch")]
    assert torch_pin == "torch==2.13.0"
    torch_steps = [i for i, run in enumerate(runs) if f"pip install {torch_pin}" in run]
    project_steps = [i for i, run in enumerate(runs) if re.search(r"pip install \.(\s|$)", run)]
    assert torch_steps, f"no `pip install {torch_pin}` step"
    assert project_steps, "no `pip install .` step"
    assert torch_steps[0] < project_steps[0], "torch must come first, from the CPU index"
    assert "--index-url" in runs[torch_steps[0]]
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in [
        f"{keyword} {rest}" for keyword, rest in dockerfile_instructions()
    ]


def test_dockerfile_runs_as_a_non_root_user_and_collects_static_files():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users, "no USER: the container would run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "collectstatic" in runs
    for keyword, rest in instructions:
        if keyword == "COPY":
            *sources, _ = rest.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY of a missing path: {source}"
        if keyword == "ENV":
            assert "SECRET_KEY" not in rest, "a secret key must never be baked into the image"


def test_entrypoint_is_valid_shell_with_the_four_roles():
    entrypoint = DEPLOY / "docker" / "entrypoint.sh"
    assert os.access(entrypoint, os.X_OK)
    subprocess.run(["sh", "-n", str(entrypoint)], check=True)
    text = entrypoint.read_text()
    blocks = {}
    for role in PROCESSES:
        match = re.search(rf"^\s+{role}\)\n(.*?);;", text, re.MULTILINE | re.DOTALL)
        assert match, f"no {role} role"
        blocks[role] = match.group(1)
    assert blocks["web"].index("migrate") < blocks["web"].index("gunicorn --config deploy/gunicorn.conf.py")
    commands = procfile()
    for role in ("worker", "aggregator"):
        assert "--pool threads" in blocks[role], role
        queues = re.search(r"--queues (\S+)", blocks[role])
        assert queues, f"{role} names no queue"
        assert queues.group(1) == option(commands[role], "--queues"), role
    assert "celerybeat-schedule" in blocks["beat"]


def test_compose_file_describes_the_whole_control_plane():
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed in this environment")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) >= {"db", "redis", *PROCESSES}
    assert services["db"]["image"] == "postgres:15"
    assert services["redis"]["image"] == "redis:7"
    assert {"postgres", "models"} <= set(compose["volumes"])
    assert "postgres:/var/lib/postgresql/data" in services["db"]["volumes"]
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    for name in PROCESSES:
        service = services[name]
        assert service["command"] == [name]
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == (
            DEPLOY / "Dockerfile"
        )
        model_dir = service["environment"]["FEDHEALTH_MODEL_DIR"]
        assert f"models:{model_dir}" in service["volumes"]
        assert service["env_file"], f"{name} takes no env file"
    assert all(port.startswith("127.0.0.1:") for port in services["web"]["ports"])


# --- health checks -----------------------------------------------------------------------------


def test_healthcheck_beat_is_healthy_only_with_a_fresh_schedule(monkeypatch, tmp_path):
    healthcheck = load_healthcheck()
    monkeypatch.setenv("FEDHEALTH_DATA_DIR", str(tmp_path))
    assert not healthcheck.beat_healthy()
    schedule = tmp_path / "celerybeat-schedule.dat"
    schedule.write_bytes(b"")
    assert healthcheck.beat_healthy()
    stale = time.time() - healthcheck.BEAT_STALE_SECONDS - 60
    os.utime(schedule, (stale, stale))
    assert not healthcheck.beat_healthy()


def test_healthcheck_picks_an_allowed_host_and_refuses_unknown_roles(monkeypatch):
    healthcheck = load_healthcheck()
    monkeypatch.setenv("ALLOWED_HOSTS", "*, .example.org,fl.example.org")
    assert healthcheck._probe_host() == "example.org"
    monkeypatch.setenv("FEDHEALTH_BIND", "127.0.0.1:1")  # nothing listens on port 1
    assert healthcheck.main(["healthcheck.py", "web"]) == 1
    assert healthcheck.main(["healthcheck.py", "nonsense"]) == 2


# --- the local runner (make demo) --------------------------------------------------------------


def load_run_local() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_local_under_test", DEPLOY / "run_local.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_local_runner_never_turns_debug_on(monkeypatch, tmp_path):
    runner = load_run_local()
    monkeypatch.setenv("FEDHEALTH_DEBUG", "true")  # even when the shell says otherwise
    assert runner.control_plane_env(tmp_path, None, None)["FEDHEALTH_DEBUG"] == "false"


def test_the_local_runner_collects_static_files_before_gunicorn_starts(monkeypatch, tmp_path):
    """Without DEBUG, WhiteNoise serves only what collectstatic put in STATIC_ROOT."""
    runner = load_run_local()
    processes = sys.modules[runner.start_control_plane.__module__]  # deploy/local/processes.py
    steps: list[str] = []
    monkeypatch.setattr(processes, "manage", lambda settings, *arguments: steps.append(" ".join(arguments)))
    monkeypatch.setattr(processes, "wait_until_healthy", lambda processes, settings: None)

    class Processes:
        def start(self, name: str, command: list[str], env: dict[str, str], **options: object) -> None:
            steps.append(f"start {name}")

    settings = runner.Settings(tmp_path, 8999, runner.control_plane_env(tmp_path, None, None))
    runner.start_control_plane(Processes(), settings, 3)
    assert steps.index("collectstatic --noinput") < steps.index("start web")
