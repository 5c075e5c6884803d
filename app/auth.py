"""Optional login for shared deployments (STUDIO_AUTH)."""

from __future__ import annotations

from pathlib import Path

from studio.errors import ConfigurationError


def parse_auth(value: str | None) -> list[tuple[str, str]] | None:
    """``user:password``, several separated by commas, or a file of such lines; None = no login."""
    if not value:
        return None
    path = Path(value).expanduser()
    entries = path.read_text().splitlines() if path.is_file() else value.split(",")
    pairs = []
    for entry in (e.strip() for e in entries):
        if not entry or entry.startswith("#"):
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user or not password:
            raise ConfigurationError("STUDIO_AUTH must be user:password (or a file of such lines)")
        pairs.append((user, password))
    return pairs or None
