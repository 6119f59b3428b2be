"""``manage.py create_user NAME --role ROLE [--institution NAME] [--password-file F |
--random-password] [--token]``.

Secrets go to standard output, one per line and nothing else (the random password first,
then the token), so that scripts can capture them; messages go to standard error.
"""

from __future__ import annotations

import secrets
from argparse import ArgumentParser
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from accounts.models import Role
from accounts.services import user_create
from fedplatform.errors import ServiceError
from institutions.models import Institution


class Command(BaseCommand):
    help = "Create a user with a role (and an institution for data owners); optionally print an API token."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=[role.value for role in Role])
        parser.add_argument("--institution", help="the data owner's institution, by name")
        passwords = parser.add_mutually_exclusive_group()
        passwords.add_argument("--password-file", type=Path, help="read the password from this file")
        passwords.add_argument(
            "--random-password", action="store_true", help="make a random password and print it once"
        )
        parser.add_argument("--token", action="store_true", help="create an API token and print it")

    def handle(self, *args: object, **options: object) -> None:
        institution = _institution(options["institution"])
        password = _password(options["password_file"], bool(options["random_password"]))
        try:
            created = user_create(
                username=str(options["username"]),
                role=Role(str(options["role"])),
                institution=institution,
                password=password,
                with_token=bool(options["token"]),
                actor="system",
            )
        except ServiceError as error:
            raise CommandError(error.message) from error
        if options["random_password"]:
            self.stdout.write(str(password))
        if created.token is not None:
            self.stdout.write(created.token)
        self.stderr.write(f"created {created.profile}")


def _institution(name: object) -> Institution | None:
    if name is None:
        return None
    institution = Institution.objects.filter(name=str(name)).first()
    if institution is None:
        raise CommandError(f"no institution named {name!r}; create it first")
    return institution


def _password(password_file: object, random_password: bool) -> str | None:
    if random_password:
        return secrets.token_urlsafe(18)
    if password_file is None:
        return None
    assert isinstance(password_file, Path)
    try:
        password = password_file.read_text().rstrip("\r\n")
    except OSError as error:
        raise CommandError(f"cannot read the password file: {error.strerror}") from error
    if not password:
        raise CommandError("the password file is empty")
    return password
