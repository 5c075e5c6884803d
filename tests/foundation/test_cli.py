"""The CLI goes through the same services; errors are one line."""

from __future__ import annotations

import json

from click.testing import CliRunner

from studio.cli import cli


def _run(args, monkeypatch, settings):
    monkeypatch.setenv("STUDIO_DATA_DIR", str(settings.data_dir))
    from studio.cli.common import services

    services.cache_clear()
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_variants_json_lists_registry_with_schemas(monkeypatch, settings):
    from studio.variants.registry import variant_names

    result = _run(["variants", "--json"], monkeypatch, settings)
    assert result.exit_code == 0
    catalog = json.loads(result.output)
    assert [v["name"] for v in catalog] == variant_names()
    lora = next(v for v in catalog if v["name"] == "lora")
    assert lora["description"] and lora["paper"]["arxiv"]
    assert "r" in lora["params_schema"]["properties"]


def test_status_json_reports_registry_broker_and_no_workers(monkeypatch, settings):
    result = _run(["status", "--json"], monkeypatch, settings)
    payload = json.loads(result.output)
    assert payload["registry_ok"] and payload["broker_ok"]
    assert payload["workers"] == [] and payload["healthy"] is False


def test_jobs_check_without_wait_queues_a_job(monkeypatch, settings):
    result = _run(["jobs", "check", "--no-wait", "--steps", "3"], monkeypatch, settings)
    assert result.exit_code == 0 and "queued job 1" in result.output
    listing = _run(["jobs"], monkeypatch, settings)
    assert "check" in listing.output and "queued" in listing.output


def test_a_job_submitted_while_the_broker_is_down_stays_queued(monkeypatch, settings):
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")  # nothing listens on port 1
    result = _run(["jobs", "check", "--no-wait", "--steps", "3"], monkeypatch, settings)
    assert result.exit_code == 0, result.output
    queued, notice = result.output.strip().splitlines()
    assert queued == "queued job 1"
    assert notice.startswith("job 1 is queued — waiting for the job queue (broker unreachable: ")
    assert "127.0.0.1:1" in notice and notice.endswith("it will be sent when it is back")
    assert "queued" in _run(["jobs"], monkeypatch, settings).output
