"""`studio transfer ID --to BASE [--keep N] [--threshold P]` builds the transfer job's request."""

from __future__ import annotations

from types import SimpleNamespace

from click.testing import CliRunner

from studio.cli import cli


def _invoke(monkeypatch, args):
    import studio.cli.transfer as command

    submitted = []

    class Jobs:
        def submit(self, request):
            submitted.append(request)
            return SimpleNamespace(id=9, status="queued", message=None, error=None)

    monkeypatch.setattr(command, "services", lambda: SimpleNamespace(jobs=Jobs(), settings=None))
    monkeypatch.setattr("studio.cli.common.echo_queue_notice", lambda job: None)
    return CliRunner().invoke(cli, ["transfer", *args]), submitted


def test_transfer_options_reach_the_request(monkeypatch):
    result, submitted = _invoke(monkeypatch, ["4", "--to", "/models/new", "--keep", "16", "--threshold", "0.7"])
    assert result.exit_code == 0, result.output
    assert "queued transfer job 9 (adapter 4 to /models/new)" in result.output
    (request,) = submitted
    assert (request.kind, request.adapter_id, request.target_base) == ("transfer", 4, "/models/new")
    assert request.options.samples == 16 and request.options.threshold == 0.7


def test_defaults_and_refusals(monkeypatch):
    result, submitted = _invoke(monkeypatch, ["4", "--to", "SmolLM2-135M"])
    assert result.exit_code == 0 and submitted[0].options.samples == 64 and submitted[0].options.threshold == 0.5
    result, submitted = _invoke(monkeypatch, ["4"])
    assert result.exit_code != 0 and "--to" in result.output and submitted == []
    result, submitted = _invoke(monkeypatch, ["4", "--to", "x", "--threshold", "1.5"])
    assert submitted == [] and "Threshold: must be less than 1" in str(result.exception)
