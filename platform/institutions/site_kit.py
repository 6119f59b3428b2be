"""The site kit of an enrollment token: what a hospital's IT team needs to run its agent.

A zip with the agent's configuration (the shipped example, ``deploy/agent/``, with this
control plane's URL and the systemd unit's paths filled in), the systemd unit, and a README
with the exact commands. It holds no secret: the enrollment token itself travels separately
(it is shown once, to the coordinator), so the kit may go by e-mail.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

from django.conf import settings

from institutions.models import EnrollmentToken

AGENT_FILES = Path(settings.BASE_DIR) / "deploy" / "agent"
#: Where the shipped systemd unit expects the agent's files.
STATE_FOLDER = "/var/lib/silo-agent"
CONFIG_PATH = "/etc/silo-agent/agent.toml"


def site_config(server_url: str) -> str:
    """The example configuration with this server and the unit's folders filled in."""
    text = (AGENT_FILES / "agent.example.toml").read_text(encoding="utf-8")
    replacements = {
        "server_url": server_url,
        "credential_file": f"{STATE_FOLDER}/credential.json",
        "state_dir": f"{STATE_FOLDER}/state",
    }
    for key, value in replacements.items():
        text, count = re.subn(rf'(?m)^{key} = ".*"$', f'{key} = "{value}"', text)
        if count != 1:
            raise RuntimeError(f"deploy/agent/agent.example.toml has no single {key} line to fill in")
    return text


def site_readme(token: EnrollmentToken, server_url: str) -> str:
    name = token.institution.name
    return f"""Site kit for {name}
{"=" * (14 + len(name))}

Control plane: {server_url}
Enrollment token #{token.pk}, valid once until {token.expires_at:%Y-%m-%d %H:%M} UTC.
The token itself is not in this kit: the coordinator gives it to you separately.

On the hospital's agent host (Linux, Python 3.11), as root:

1. Install the agent (it only dials out; it never listens):

   python3.11 -m venv /opt/silo-agent
   /opt/silo-agent/bin/pip install torch==2.13.0
   /opt/silo-agent/bin/pip install fedhealth      # or a checkout: ./fedhealth

2. Create its user, folders and configuration:

   useradd --system --home-dir {STATE_FOLDER} --shell /usr/sbin/nologin silo-agent
   install -d -o silo-agent -g silo-agent -m 0700 {STATE_FOLDER}
   install -d -o root -g silo-agent -m 0750 /etc/silo-agent
   install -o root -g silo-agent -m 0640 agent.toml {CONFIG_PATH}

   Then edit {CONFIG_PATH}: [data] path = your CSV export, and [policy] the studies
   your data owner approved and the limits you accept (docs/agent.md).

3. Enroll with the token (typed or pasted; it is read from standard input):

   sudo -u silo-agent /opt/silo-agent/bin/silo-agent enroll --config {CONFIG_PATH} --token -

4. Run it as a service:

   cp silo-agent.service /etc/systemd/system/ && systemctl daemon-reload
   systemctl enable --now silo-agent
   sudo -u silo-agent /opt/silo-agent/bin/silo-agent status --config {CONFIG_PATH}

The console's page of {name} then shows the agent online.
"""


def site_kit_zip(token: EnrollmentToken, server_url: str) -> bytes:
    """The kit as zip bytes: ``agent.toml``, ``silo-agent.service`` and ``README.txt``."""
    folder = f"site-kit-{token.institution_id}-{token.pk}"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{folder}/agent.toml", site_config(server_url))
        archive.writestr(f"{folder}/silo-agent.service", (AGENT_FILES / "silo-agent.service").read_text())
        archive.writestr(f"{folder}/README.txt", site_readme(token, server_url))
    return buffer.getvalue()
