#!/usr/bin/env python
"""Django's command-line utility for the control plane."""

import os
import sys
from pathlib import Path

# platform/ holds the Django project; it is a plain folder, so that nothing named
# "platform" ever shadows the standard library's module of that name.
sys.path.insert(0, str(Path(__file__).resolve().parent / "platform"))


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fedplatform.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
