"""Library and code versions, recorded with every job for reproducibility."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

TRACKED = ("torch", "transformers", "peft", "accelerate", "celery", "sqlalchemy", "gradio", "adapter-studio")


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that decide a job's numbers, plus the code version."""
    versions = {}
    for name in TRACKED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    versions["code"] = code_version()
    return versions


@lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the running code when it is a checkout, else the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from studio import __version__

        return __version__
