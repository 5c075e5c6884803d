"""A form's submission token: a repeated submit (a double click) finds the first one's dataset or job."""

from __future__ import annotations

import json

import pytest

from studio.schema import CheckRequest
from studio.services.container import Services
from studio.services.jobs import JobService


class RecordingDispatcher:
    def __init__(self):
        self.sent: list[int] = []

    def send(self, job_id: int) -> str:
        self.sent.append(job_id)
        return f"task-{job_id}-{len(self.sent)}"

    def revoke(self, task_id):
        pass


@pytest.fixture
def services(settings, registry):
    return Services(settings=settings, registry=registry, jobs=JobService(registry, RecordingDispatcher()))


@pytest.fixture
def rows_file(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"say {i}", "output": str(i)}) + "\n" for i in range(4)))
    return path


def test_a_repeated_job_submit_queues_one_job_and_sends_it_once(services):
    first = services.jobs.submit(CheckRequest(steps=3), submission_token="form-a-1")
    again = services.jobs.submit(CheckRequest(steps=3), submission_token="form-a-1")
    assert again.id == first.id and services.jobs.dispatcher.sent == [first.id]
    assert len(services.jobs.list()) == 1
    # A fresh token (the form's next submit) and submits without one (CLI, scripts) add jobs.
    services.jobs.submit(CheckRequest(steps=3), submission_token="form-a-2")
    services.jobs.submit(CheckRequest(steps=3))
    services.jobs.submit(CheckRequest(steps=3))
    assert len(services.jobs.list()) == 4 and len(services.jobs.dispatcher.sent) == 4


def test_two_submits_racing_past_the_lookup_still_make_one_job(services, monkeypatch):
    # Both clicks checked for the token before either inserted: the unique index decides.
    monkeypatch.setattr(services.registry, "job_with_token", lambda token: None)
    first = services.jobs.submit(CheckRequest(steps=3), submission_token="race")
    second = services.jobs.submit(CheckRequest(steps=3), submission_token="race")
    assert second.id == first.id and [j.id for j in services.jobs.list()] == [first.id]
    assert services.jobs.dispatcher.sent == [first.id]  # the repeat's send finds it sent already


def test_a_repeated_import_stores_one_dataset_and_one_copy_of_its_files(services, rows_file):
    first = services.datasets.add(rows_file, name="qa", submission_token="import-1")
    again = services.datasets.add(rows_file, name="qa", submission_token="import-1")
    assert again.id == first.id and [d.id for d in services.datasets.list()] == [first.id]
    other = services.datasets.add(rows_file, name="qa", submission_token="import-2")
    assert other.id != first.id and len(services.datasets.list()) == 2


def test_an_import_that_raced_the_first_keeps_only_the_first_ones_files(services, rows_file, monkeypatch):
    monkeypatch.setattr(services.registry, "dataset_with_token", lambda token: None)
    first = services.datasets.add(rows_file, submission_token="race")
    second = services.datasets.add(rows_file, submission_token="race")
    assert second.id == first.id and len(services.datasets.list()) == 1
    folders = [p for p in services.settings.datasets_dir.iterdir() if p.is_dir()]
    assert [str(f / "data.jsonl") for f in folders] == [first.stored_path]
