"""The console's small forms: they parse input; the services decide.

A service refuses with a :class:`~fedplatform.errors.ServiceError` whose message names the
field at fault where it can (``min_updates must lie between ...``);
:func:`add_service_error` shows such a message next to that field, and anything else above
the form.
"""

from __future__ import annotations

from django import forms

from accounts.selectors import Scope
from audit.selectors import audit_kind_list
from fedplatform.errors import ServiceError
from institutions.selectors import institution_list
from institutions.services import MAX_TOKEN_HOURS
from training.selectors import job_list
from training.services import MAX_DEADLINE_SECONDS, MAX_ROUNDS

AUDIT_PAGE_SIZE = 50


def add_service_error(form: forms.BaseForm, error: ServiceError, *, default: str | None = None) -> None:
    """Attach ``error`` to the first field its message names, else to ``default`` (a field
    name) or, without one, to the whole form."""
    for name in form.fields:
        if error.message.startswith(name) or f" {name} " in f" {error.message} ":
            form.add_error(name, error.message)
            return
    form.add_error(default, error.message)


class InstitutionForm(forms.Form):
    name = forms.CharField(
        max_length=200,
        label="Institution name",
        help_text="As the consortium knows it, e.g. “St. Mary’s Hospital”. Names are unique.",
    )


class EnrollmentTokenForm(forms.Form):
    hours = forms.IntegerField(
        min_value=1,
        max_value=MAX_TOKEN_HOURS,
        initial=24,
        label="Valid for (hours)",
        help_text="The token works once, within this time.",
    )


class DecisionForm(forms.Form):
    decision = forms.ChoiceField(choices=[("approve", "Approve"), ("decline", "Decline")])


class JobForm(forms.Form):
    num_rounds = forms.IntegerField(
        min_value=1, max_value=MAX_ROUNDS, initial=10, label="Rounds", help_text="Training rounds to run."
    )
    min_updates = forms.IntegerField(
        min_value=1,
        label="Quorum (minimum updates)",
        help_text="The fewest site updates a round may close with when its deadline passes.",
    )
    round_deadline_seconds = forms.IntegerField(
        min_value=1,
        max_value=MAX_DEADLINE_SECONDS,
        initial=600,
        label="Round deadline (seconds)",
        help_text="How long sites have to answer a round.",
    )
    max_deadline_extensions = forms.IntegerField(
        min_value=0,
        max_value=100,
        initial=1,
        label="Deadline extensions",
        help_text="How often a round below quorum gets more time before the job fails.",
    )
    early_stopping_rounds = forms.IntegerField(
        min_value=1,
        max_value=MAX_ROUNDS,
        required=False,
        label="Early stopping (rounds)",
        help_text=(
            "Optional: stop training once the sites' validation loss has not improved for this many rounds."
        ),
    )

    def __init__(self, *args: object, participants: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fields["min_updates"].initial = participants
        self.fields["min_updates"].help_text += f" The study has {participants} participants."


class AuditFilterForm(forms.Form):
    """The audit log's filters (GET parameters); choices limited to what the scope sees."""

    institution = forms.TypedChoiceField(coerce=int, required=False, empty_value=None)
    job = forms.TypedChoiceField(coerce=int, required=False, empty_value=None)
    actor = forms.CharField(
        required=False,
        max_length=200,
        widget=forms.TextInput(attrs={"placeholder": "a user name, agent:3, system"}),
        help_text="A user name, agent:ID, system or anonymous.",
    )
    kind = forms.ChoiceField(required=False)

    def __init__(self, *args: object, scope: Scope, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        anything = [("", "Any")]
        institutions = institution_list(scope=scope).values_list("pk", "name")
        self.fields["institution"].choices = anything + [(str(pk), name) for pk, name in institutions]  # type: ignore[attr-defined]
        jobs = job_list(scope=scope).values_list("pk", "study__name")
        self.fields["job"].choices = anything + [(str(pk), f"Job {pk} · {name}") for pk, name in jobs]  # type: ignore[attr-defined]
        self.fields["kind"].choices = anything + [(kind, kind) for kind in audit_kind_list(scope=scope)]  # type: ignore[attr-defined]


class InvitationForm(forms.Form):
    username = forms.CharField(max_length=150, label="User name", help_text="They sign in with it.")
    role = forms.ChoiceField(
        choices=[("data_owner", "Data owner of an institution"), ("observer", "Observer (read only)")],
        label="Role",
    )
    institution: forms.ModelChoiceField = forms.ModelChoiceField(
        queryset=None,
        required=False,
        label="Institution",
        help_text="A data owner's institution: they approve studies for it.",
    )

    def __init__(self, *args: object, scope: Scope, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fields["institution"].queryset = institution_list(scope=scope)  # type: ignore[attr-defined]


class AcceptInvitationForm(forms.Form):
    password = forms.CharField(widget=forms.PasswordInput, label="Password", strip=False)
    password_again = forms.CharField(widget=forms.PasswordInput, label="Password again", strip=False)

    def clean(self) -> dict[str, object]:
        cleaned = super().clean() or {}
        if cleaned.get("password") != cleaned.get("password_again"):
            self.add_error("password_again", "The two passwords differ.")
        return cleaned
