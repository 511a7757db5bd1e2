"""The signing secret and the admin token, kept in the state folder beside the data they sign.

A purchase id is HMAC(secret, user, key) and Postgres keeps its rows across
`down` and `up`: a new secret on each `up` would give a retry a new purchase id
that the consumer drops as a duplicate of the (user, key) it already holds, so
the new id would answer `pending` forever. The first `up` writes the secrets
(mode 0600); later ones read them back. Explicit FLASHSALE_SECRET /
FLASHSALE_ADMIN_TOKEN still win.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from services.errors import SettingsError
from services.settings import Settings

SECRETS_FILE = "secrets.json"
SECRET_RANDOM_BYTES = 32


def _generated() -> str:
    return secrets.token_urlsafe(SECRET_RANDOM_BYTES)


def _read(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SettingsError(f"cannot read the stack's secrets from {path}: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(data.get(name), str) for name in ("secret", "admin_token")
    ):
        raise SettingsError(f"{path} must hold a JSON object with secret and admin_token")
    return data


def _write_once(path: Path, values: dict[str, str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(values, indent=2) + "\n")
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


def stack_secrets(state_dir: Path, settings: Settings) -> Settings:
    """Settings with the state folder's secret and admin token, made on first use."""
    path = state_dir / SECRETS_FILE
    kept = _read(path) if path.exists() else {"secret": _generated(), "admin_token": _generated()}
    resolved = settings.replace(
        secret=settings.secret or kept["secret"],
        admin_token=settings.admin_token or kept["admin_token"],
    )
    resolved.require_secrets()  # before writing: a short key is never kept
    if not path.exists():
        _write_once(path, {"secret": resolved.secret, "admin_token": resolved.admin_token})
    return resolved
