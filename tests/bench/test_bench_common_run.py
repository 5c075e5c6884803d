"""bench/common.py's shared start of a real-data script: its options, its start-up and its resumable record."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import common  # noqa: E402


def test_run_arguments_add_data_threads_and_only_the_options_asked_for():
    bare = argparse.ArgumentParser()
    common.add_run_arguments(bare)
    assert {a.dest for a in bare._actions} == {"help", "data", "threads"}
    args = bare.parse_args([])
    assert args.data == common.SHARED_DATA and args.threads == 1

    full = argparse.ArgumentParser()
    common.add_run_arguments(full, out="x.json", doc="x.md", resume="skip what is done", quick="tiny")
    args = full.parse_args([])
    assert args.out == str(common.RESULTS_DIR / "x.json")
    assert args.doc == str(common.DOCS_RESULTS_DIR / "x.md")
    assert args.resume is False and args.quick is False
    helps = {a.dest: a.help for a in full._actions}
    assert helps["resume"] == "skip what is done" and helps["quick"] == "tiny"
    assert full.parse_args(["--resume", "--quick", "--threads", "2"]).threads == 2


def test_start_run_reads_the_data_folder_and_pins_the_threads(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(common, "SHARED_DATA", common.SAMPLES_DIR)
    names = (
        "OMP_NUM_THREADS MKL_NUM_THREADS STUDIO_MODELS_DIR HF_HUB_OFFLINE TRANSFORMERS_OFFLINE TOKENIZERS_PARALLELISM"
    )
    for name in names.split():  # monkeypatch puts back what prepare_env sets
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    try:
        common.start_run(argparse.Namespace(data=tmp_path, threads=1))
        assert tmp_path.resolve() == common.SHARED_DATA
        assert common.os.environ["OMP_NUM_THREADS"] == "1" and common.os.environ["MKL_NUM_THREADS"] == "1"
        assert common.os.environ["STUDIO_MODELS_DIR"] == common.DEFAULT_MODELS_DIR
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(SystemExit, match="is not a folder"):
        common.start_run(argparse.Namespace(data=tmp_path / "missing", threads=0))


def test_record_is_resumed_only_with_the_same_config_and_saves_add_up_the_time(tmp_path, monkeypatch):
    out, doc = tmp_path / "run.json", tmp_path / "run.md"
    monkeypatch.setattr(common.sys, "argv", ["scripts/x.py", "--quick"])
    fresh = argparse.Namespace(out=str(out), resume=False)
    record = common.open_record(fresh, {"steps": "4"}, {"setup": {}, "arms": {}})
    assert list(record)[:4] == ["config", "setup", "arms", "elapsed_s"]
    assert record["config"] == {"steps": "4"} and record["elapsed_s"] == 0.0 and record["finished"] is False
    assert record["command"] == "python scripts/x.py --quick" and "cpu" in record["machine"]
    assert "load_start" in record

    save = common.record_saver(record, out, doc, lambda r: f"# {len(r['arms'])} arms\n")
    record["arms"]["a"] = 1.0
    save()
    saved = json.loads(out.read_text())
    assert saved["arms"] == {"a": 1.0} and saved["elapsed_s"] >= 0.0 and "load_end" in saved
    assert doc.read_text() == "# 1 arms\n"

    saved["elapsed_s"] = 100.0  # what an earlier, stopped run spent
    out.write_text(json.dumps(saved))
    resumed = argparse.Namespace(out=str(out), resume=True)
    again = common.open_record(resumed, {"steps": "4"}, {"setup": {}, "arms": {}})
    assert again["arms"] == {"a": 1.0} and again["finished"] is False
    common.record_saver(again, out, doc, lambda r: "page\n")()
    assert json.loads(out.read_text())["elapsed_s"] >= 100.0
    with pytest.raises(SystemExit, match="another set-up"):
        common.open_record(resumed, {"steps": "8"}, {"setup": {}, "arms": {}})
    # without --resume the saved file is ignored: a fresh record
    assert common.open_record(fresh, {"steps": "8"}, {"results": {}})["elapsed_s"] == 0.0
