"""`studio jobs logs` and `studio jobs --status` refuse what does not exist instead of printing nothing."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from studio.cli import cli
from studio.errors import NotFoundError


def _invoke(args: list[str]):
    """Run the CLI on the test's data dir (the settings fixture clears the cached services)."""
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_logs_of_an_unknown_job_is_an_error(settings):
    # main() turns this StudioError into "error: job 999 does not exist; ..." and exit code 2.
    with pytest.raises(NotFoundError, match="job 999 does not exist"):
        _invoke(["jobs", "logs", "999"])


def test_logs_of_a_job_without_lines_says_so(settings):
    assert _invoke(["jobs", "check", "--no-wait", "--steps", "1"]).exit_code == 0
    result = _invoke(["jobs", "logs", "1"])
    assert result.exit_code == 0
    assert result.output.strip() == "job 1 (queued) has no log lines yet"


def test_an_unknown_status_filter_is_refused_with_the_known_ones(settings):
    result = _invoke(["jobs", "--status", "finished"])
    assert result.exit_code == 2
    assert "'finished' is not one of" in result.output and "'succeeded'" in result.output


def test_a_known_status_filter_lists_the_matching_jobs(settings):
    _invoke(["jobs", "check", "--no-wait", "--steps", "1"])
    assert "check" in _invoke(["jobs", "--status", "queued"]).output
    assert _invoke(["jobs", "--status", "failed"]).output.strip() == "(none)"


def test_cancelling_a_job_that_already_ended_says_there_was_nothing_to_cancel(settings):
    _invoke(["jobs", "check", "--no-wait", "--steps", "1"])
    assert _invoke(["jobs", "cancel", "1"]).output.strip() == "job 1: cancelled"  # queued: cancelled at once
    again = _invoke(["jobs", "cancel", "1"])
    assert again.exit_code == 0
    assert again.output.strip() == "job 1 already ended (cancelled): nothing to cancel"  # was "job 1: cancelled"
