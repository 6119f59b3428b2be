"""The error vocabulary of the silo agent; the command line maps each class to an exit code."""

from __future__ import annotations


class AgentError(Exception):
    """Base class of every deliberate error of the agent."""


class ConfigError(AgentError):
    """The configuration file, the credential file or the command line is wrong (exit 2)."""


class StateError(AgentError):
    """The local state file is unreadable; the agent will not guess (exit 1)."""


class CredentialRejectedError(AgentError):
    """The server rejected or revoked this agent's credential (exit 3): restarting will not help."""


class ServerUnreachableError(AgentError):
    """The server could not be reached (or kept answering "try later") after every retry."""


class TaskError(AgentError):
    """One task could not be carried out (bad download, local data that does not fit, ...)."""


class ApiError(AgentError):
    """The server answered with an error that retrying will not fix.

    ``code`` and ``message`` come from the API's error shape
    ``{"error": {"code", "message", "fields"}}``; ``fields`` only for validation errors.
    """

    def __init__(self, status: int, code: str, message: str, fields: dict[str, list[str]] | None = None):
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}
        super().__init__(self._describe())

    def _describe(self) -> str:
        text = f"server answered {self.status} {self.code}: {self.message}"
        if self.fields:
            details = "; ".join(f"{name}: {' '.join(messages)}" for name, messages in self.fields.items())
            text += f" ({details})"
        return text


class StopRequested(BaseException):  # a request, like KeyboardInterrupt, not an error
    """SIGTERM or SIGINT arrived; derived from BaseException so no ``except Exception`` eats it."""
