"""A malformed or unreachable configuration is one clear line, never a traceback."""

from __future__ import annotations

import pytest

from .helpers import clean_environment, run_studio

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.mark.parametrize(
    "setting",
    [
        {"DATABASE_URL": "mysql://x"},
        {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nothing"},  # nothing listens on port 1
        {"CELERY_BROKER_URL": "notaurl"},
        {"CELERY_BROKER_URL": "redis://127.0.0.1:1/0"},
    ],
    ids=["database-scheme", "database-unreachable", "broker-malformed", "broker-unreachable"],
)
def test_status_reports_bad_configuration_in_one_line(tmp_path, setting):
    result = run_studio(["status"], clean_environment(STUDIO_DATA_DIR=str(tmp_path), **setting), timeout=45)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr
    name, value = next(iter(setting.items()))
    assert value.split("://")[-1].split("/")[0] in errors[0], "the message should name the bad setting's value"
