"""The ``silo-agent`` command line.

Commands (each takes ``--config PATH``, the agent's TOML file):

* ``enroll --token T``: exchange a one-time enrollment token for a credential, saved
  with mode 0600 to ``credential_file``; refuses to replace one unless ``--force``.
* ``run [--once] [--exit-when-idle SECONDS]``: the agent's main loop.
* ``status``: the local state and the server's view of this institution.
* ``moments [--schema schema.json]``: the local feature moments (count, sum, sum of
  squares) as JSON, for agreeing feature scaling without pooling rows.

Exit codes:

* 0: done (also after SIGTERM or SIGINT: the state is saved and the next start resumes);
* 1: an unexpected error (a bug, an unreadable state file, a failed ``--once`` task);
* 2: bad configuration or usage;
* 3: the server rejected or revoked the credential, or refused the enrollment token;
  restarting will not help (systemd: ``RestartPreventExitStatus=3``);
* 4: the server could not be reached after retries (``status`` and ``enroll``; ``run``
  keeps retrying instead).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

from federation.errors import FederationError
from federation.models.packages import ENTRY_POINT_GROUP, installed_model_packages
from silo_agent import __version__
from silo_agent.agent_loop import AgentLoop, LoopOptions
from silo_agent.client import AgentClient, RetryPolicy, ServerView
from silo_agent.config import AgentConfig, DataSourceKind, load_config
from silo_agent.credential import Credential, read_credential, write_credential
from silo_agent.errors import (
    AgentError,
    ApiError,
    ConfigError,
    CredentialRejectedError,
    ServerUnreachableError,
    StopRequested,
)
from silo_agent.local_data import DataCache
from silo_agent.logs import configure_logging
from silo_agent.runner import TaskRunner
from silo_agent.state import AgentState, StateStore
from silo_agent.warmup import warm_up

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_CONFIG = 2
EXIT_CREDENTIAL = 3
EXIT_UNREACHABLE = 4

_EXIT_CODES_HELP = """exit codes:
  0  done (also after SIGTERM/SIGINT: state is saved, the next start resumes)
  1  unexpected error
  2  bad configuration or usage
  3  credential rejected or revoked, or enrollment token refused (do not restart)
  4  server unreachable after retries (status, enroll; run keeps retrying)
"""


@dataclass
class Runtime:
    """What the commands take from the outside world; tests replace parts of it."""

    transport: httpx.BaseTransport | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    setup_logging: bool = True
    handle_signals: bool = True


def main(argv: Sequence[str] | None = None, runtime: Runtime | None = None) -> int:
    """Run one command; returns the exit code."""
    arguments = build_parser().parse_args(argv)
    runtime = runtime or Runtime()
    if runtime.setup_logging:
        configure_logging(verbose=arguments.verbose)
    command: _Command = arguments.handler
    try:
        return command(arguments, runtime)
    except StopRequested as stop:
        logger.info("stopped by %s; the state is saved and the next start resumes", stop)
        return EXIT_OK
    except ConfigError as error:
        return _fail(error, EXIT_CONFIG)
    except CredentialRejectedError as error:
        return _fail(error, EXIT_CREDENTIAL)
    except ServerUnreachableError as error:
        return _fail(error, EXIT_UNREACHABLE)
    except AgentError as error:
        return _fail(error, EXIT_UNEXPECTED)
    except Exception:
        logger.exception("unexpected error")
        return EXIT_UNEXPECTED


_Command = Callable[[argparse.Namespace, "Runtime"], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="silo-agent",
        description="The fedhealth silo agent: trains on this site's data; only model updates and "
        "aggregate metrics leave the site.",
        epilog=_EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"silo-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    enroll = _add_command(
        commands, "enroll", command_enroll, "exchange a one-time enrollment token for a credential"
    )
    enroll.add_argument("--token", required=True, help="the enrollment token ('-' reads it from stdin)")
    enroll.add_argument("--force", action="store_true", help="replace an existing credential file")
    run = _add_command(
        commands, "run", command_run, "heartbeat, poll for work, train and upload, until stopped"
    )
    run.add_argument("--once", action="store_true", help="handle at most one task, then exit")
    run.add_argument(
        "--exit-when-idle",
        type=_positive_seconds,
        metavar="SECONDS",
        help="exit 0 after this long without a task",
    )
    _add_command(
        commands, "status", command_status, "show the local state and the server's view of this site"
    )
    moments = _add_command(
        commands, "moments", command_moments, "print the local feature moments (aggregates only) as JSON"
    )
    moments.add_argument(
        "--schema", type=Path, metavar="PATH", help="the study's data schema (JSON); needed for CSV data"
    )
    _add_schema_commands(commands)
    _add_models_commands(commands)
    return parser


def _add_models_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``models list``: what model packages this site has installed, and their digests."""
    text = "model packages installed at this site (docs/model-packages.md)"
    models = commands.add_parser("models", help=text, description=text)
    actions = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    text = "list the installed model packages: name, version, digest of their files, models; as JSON"
    listing = actions.add_parser("list", help=text, description=text)
    listing.add_argument(
        "--path", action="append", metavar="FOLDER", help="look in this folder instead of the installed ones"
    )
    listing.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")
    listing.set_defaults(handler=command_models_list)


def _add_schema_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``schema suggest``: needs no configuration, only the file."""
    text = "data schemas: propose one from this site's own file"
    schema = commands.add_parser("schema", help=text, description=text)
    actions = schema.add_subparsers(dest="schema_command", required=True, metavar="ACTION")
    text = "propose a data schema from a CSV file: column kinds, categories, task and classes"
    suggest = actions.add_parser(
        "suggest",
        help=text,
        description=text,
        epilog=_EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    suggest.add_argument("csv", type=Path, metavar="CSV", help="the site's data file")
    suggest.add_argument("--label", required=True, metavar="COLUMN", help="the column to predict")
    suggest.add_argument(
        "--task",
        choices=["binary", "multiclass", "regression"],
        help="override the guess from the label's values",
    )
    suggest.add_argument(
        "--output", type=Path, metavar="PATH", help="write the schema here instead of printing it"
    )
    suggest.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")
    suggest.set_defaults(handler=command_schema_suggest)


def _add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, handler: _Command, text: str
) -> argparse.ArgumentParser:
    command = commands.add_parser(
        name,
        help=text,
        description=text,
        epilog=_EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("--config", type=Path, required=True, metavar="PATH", help="the agent's TOML file")
    command.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")
    command.set_defaults(handler=handler)
    return command


# --- commands ---------------------------------------------------------------------------


def command_models_list(arguments: argparse.Namespace, runtime: Runtime) -> int:
    """One JSON object per line and package: what a data owner compares with a study's."""
    try:
        packages = installed_model_packages(paths=arguments.path)
    except FederationError as error:
        raise ConfigError(str(error)) from None
    for package in packages:
        print(json.dumps(package.to_json()))
    if not packages:
        logger.info("no model package is installed (none registers %s entry points)", ENTRY_POINT_GROUP)
    return EXIT_OK


def command_enroll(arguments: argparse.Namespace, runtime: Runtime) -> int:
    config = load_config(arguments.config)
    path = config.credential_file
    if path.exists() and not arguments.force:
        raise ConfigError(f"{path} already exists; pass --force to replace it with a new credential")
    token = sys.stdin.readline().strip() if arguments.token == "-" else arguments.token  # noqa: S105
    with _client(config, runtime, key=None) as client:
        try:
            credential = client.enroll(token, socket.gethostname())
        except ApiError as error:
            raise CredentialRejectedError(f"the server refused the enrollment token: {error}") from None
    write_credential(path, credential)
    print(f"enrolled as {_describe(credential)}")
    print(f"credential saved to {path} (mode 0600)")
    return EXIT_OK


def command_run(arguments: argparse.Namespace, runtime: Runtime) -> int:
    config = load_config(arguments.config)
    credential = _credential_for(config)
    _check_data_source(config)
    store = StateStore(config.state_dir)
    options = LoopOptions(
        poll_wait_seconds=config.poll_wait_seconds,
        once=arguments.once,
        exit_when_idle=arguments.exit_when_idle,
    )
    with store.lock(), _client(config, runtime, key=credential.key) as client, _stop_on_signals(runtime):
        store.prepare()
        if store.bind(f"{config.server_url}#credential-{credential.credential_id}"):
            logger.warning("state kept for another server or credential was moved aside; starting afresh")
        institution = credential.institution
        runner = TaskRunner(
            client=client,
            policy=config.policy,
            institution_id=institution.id,
            store=store,
            data=DataCache(config.data, institution.id),
            models=config.models,
        )
        logger.info(
            "silo-agent %s for %s (institution %d) polling %s",
            __version__,
            institution.name,
            institution.id,
            config.server_url,
        )
        warm_up(config)
        loop = AgentLoop(
            client=client, runner=runner, options=options, clock=runtime.clock, sleep=runtime.sleep
        )
        return loop.run()


def command_status(arguments: argparse.Namespace, runtime: Runtime) -> int:
    config = load_config(arguments.config)
    print(f"config:      {config.config_path}")
    print(f"server:      {config.server_url}")
    try:
        credential = _credential_for(config)
    except ConfigError as error:
        print(f"enrolled:    no ({error})")
        return EXIT_CONFIG
    print(f"enrolled:    {_describe(credential)}")
    _print_local_state(StateStore(config.state_dir).load())
    with _client(config, runtime, key=credential.key) as client:
        try:
            view = client.me()
        except ServerUnreachableError as error:
            print(f"server view: unreachable ({error})")
            return EXIT_UNREACHABLE
    _print_server_view(view)
    return EXIT_OK


def command_moments(arguments: argparse.Namespace, runtime: Runtime) -> int:
    from federation.data import DataSchema
    from federation.errors import FederationError
    from silo_agent.local_data import site_moments

    config = load_config(arguments.config)
    if config.data.kind is DataSourceKind.CSV and arguments.schema is None:
        raise ConfigError("--schema: a CSV data source needs the study's data schema")
    try:
        schema = (
            None
            if arguments.schema is None
            else DataSchema.from_json(_read_json(arguments.schema, "--schema"))
        )
        moments = site_moments(config.data, schema)
    except FederationError as error:
        raise ConfigError(str(error)) from None
    print(json.dumps(moments.to_json()))
    return EXIT_OK


def command_schema_suggest(arguments: argparse.Namespace, runtime: Runtime) -> int:
    """Print (or write) the proposed schema as JSON; notes for review go to stderr."""
    from federation.data.suggest import suggest_schema
    from federation.errors import FederationError
    from federation.types import Task

    try:
        task = None if arguments.task is None else Task(arguments.task)
        suggestion = suggest_schema(arguments.csv, label=arguments.label, task=task)
    except FederationError as error:
        raise ConfigError(str(error)) from None
    text = json.dumps(suggestion.schema.to_json(), indent=2)
    if arguments.output is None:
        print(text)
    else:
        arguments.output.write_text(text + "\n", encoding="utf-8")
    schema = suggestion.schema
    width = len(schema.encoded_feature_names())
    summary = (
        f"{suggestion.rows} rows, {len(schema.features)} features ({width} encoded), {schema.task.value}"
    )
    print(f"proposed from {arguments.csv}: {summary}", file=sys.stderr)
    for note in suggestion.notes:
        print(f"  review: {note}", file=sys.stderr)
    if arguments.output is not None:
        print(f"written to {arguments.output}", file=sys.stderr)
    return EXIT_OK


# --- helpers ----------------------------------------------------------------------------


def _client(config: AgentConfig, runtime: Runtime, *, key: str | None) -> AgentClient:
    return AgentClient(
        config.server_url,
        key=key,
        ca_bundle=config.ca_bundle,
        retry=runtime.retry,
        rng=runtime.rng,
        sleep=runtime.sleep,
        transport=runtime.transport,
        policy_limits=config.policy.limits(),
    )


def _credential_for(config: AgentConfig) -> Credential:
    credential = read_credential(config.credential_file)
    if credential.server_url.rstrip("/") != config.server_url:
        # Never send the key to a server other than the one that issued it.
        raise ConfigError(
            f"{config.credential_file} was issued by {credential.server_url}, but server_url is "
            f"{config.server_url}; enroll again with --force"
        )
    return credential


def _check_data_source(config: AgentConfig) -> None:
    data = config.data
    for key, path in (("data.path", data.csv_path), ("data.rows", data.rows_file)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{key}: {path} is not a readable file")


@contextmanager
def _stop_on_signals(runtime: Runtime) -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`StopRequested` wherever the agent is: every step is
    saved atomically before the next, so abandoning one mid-way loses nothing."""
    if not runtime.handle_signals:
        yield
        return

    def request_stop(signal_number: int, frame: FrameType | None) -> None:
        raise StopRequested(signal.Signals(signal_number).name)

    previous = {number: signal.signal(number, request_stop) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _print_local_state(state: AgentState) -> None:
    current = state.current
    if current is None:
        print("current:     no round in progress")
    else:
        print(
            f"current:     job {current.job_id} round {current.round_number} (round id {current.round_id}, "
            f"{current.kind.value}): {current.step.value}"
        )
    print(f"completed:   {len(state.completed)} round(s) remembered")
    for job_id, reason in sorted(state.refused_jobs.items()):
        print(f"refused:     job {job_id}: {reason}")


def _print_server_view(view: ServerView) -> None:
    institution = view.institution
    print(f"server view: {institution.name} (institution {institution.id}), credential {view.credential_id}")
    for study in view.studies:
        print(f"  study {study.id} {study.name!r}: {study.approval}")
    for job in view.jobs:
        round_text = "-" if job.current_round is None else str(job.current_round)
        print(f"  job {job.id} (study {job.study_id}): {job.state}, current round {round_text}")
    if not view.studies and not view.jobs:
        print("  no studies or jobs for this institution")


def _describe(credential: Credential) -> str:
    institution = credential.institution
    return f"{institution.name} (institution {institution.id}), credential {credential.credential_id}"


def _read_json(path: Path, option: str) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"{option}: cannot read {path} as JSON ({error})") from None


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _fail(error: Exception, code: int) -> int:
    print(f"silo-agent: {error}", file=sys.stderr)
    return code
