"""Ctrl-C on `--wait` ends the wait only: the CLI says the job goes on and how to follow or cancel it."""

from __future__ import annotations

from click.testing import CliRunner

from studio.cli import cli
from studio.services.jobs import JobService


def _interrupt_the_wait(monkeypatch) -> None:
    """Make every wait end as if the user pressed Ctrl-C while the job was still queued."""

    def wait(self, job_id, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(JobService, "wait", wait)


def test_ctrl_c_while_waiting_says_the_job_is_still_queued(settings, registry, monkeypatch):
    _interrupt_the_wait(monkeypatch)

    result = CliRunner().invoke(cli, ["jobs", "check", "--steps", "1"])

    assert result.exit_code == 1  # click's Abort, as for any Ctrl-C
    assert "stopped waiting; job 1 is still queued and goes on without this command" in result.stderr
    assert "`studio jobs cancel 1` stops it" in result.stderr
    assert registry.get_job(1).status == "queued"  # the wait ended, the job did not


def test_ctrl_c_after_the_job_ended_names_how_it_ended(settings, registry, monkeypatch):
    def wait(self, job_id, **_kwargs):
        self.cancel(job_id)  # it ended (here: cancelled elsewhere) just as the user gave up
        raise KeyboardInterrupt

    monkeypatch.setattr(JobService, "wait", wait)

    result = CliRunner().invoke(cli, ["jobs", "check", "--steps", "1"])

    assert result.exit_code == 1
    assert "stopped waiting; job 1 cancelled: `studio jobs show 1` has its details" in result.stderr
