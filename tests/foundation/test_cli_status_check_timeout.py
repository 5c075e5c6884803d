"""`studio status --check --timeout N` with no worker: the report still prints, the check is marked and cancelled."""

from __future__ import annotations

from click.testing import CliRunner

from studio.cli import cli


def test_a_check_that_times_out_prints_the_report_and_cancels_the_job(settings, registry):
    result = CliRunner().invoke(cli, ["status", "--check", "--timeout", "0.5"], catch_exceptions=False)
    assert result.exit_code == 1
    assert "registry :" in result.output and "workers  : 0 online" in result.output  # the report, not only an error
    assert "check    : job 1 timed out in" in result.output
    assert "is still queued after" in result.output and "the check job was cancelled" in result.output
    [job] = registry.list_jobs(kind="check")
    assert job.status == "cancelled"  # no worker coming up later runs a check nobody waits for
