"""Across sites on Flower's deployment runtime: a SuperLink and two SuperNodes as separate processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import click
import pytest
from click.testing import CliRunner
from conftest_training import chat_rows, write_jsonl

from studio.cli.federated_sites import register
from studio.federated.sites import Security, free_port, supernode_command, write_app

MODULE = [sys.executable, "-m", "studio.cli.federated_sites"]
# Each process imports torch and each round starts a fresh `flwr-clientapp` per site (Flower's
# isolation): about a minute on an idle 2-core machine, more on a busy one.
SERVER_LIMIT_S = 400


def _env(tmp_path, name):
    env = {**os.environ, "FLWR_HOME": str(tmp_path / f"flwr-{name}"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.getcwd(), env.get("PYTHONPATH", "")] if p)
    return env


class Proc:
    """A child process whose merged output is collected line by line in a thread."""

    def __init__(self, argv, env, cwd):
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.popen.stdout:
            self.lines.append(line)

    def wait_for(self, text, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return True
            if self.popen.poll() is not None:
                return False
            time.sleep(0.2)
        return False

    def output(self):
        return "".join(self.lines)

    def stop(self):
        if self.popen.poll() is None:
            self.popen.terminate()  # serve stops its SuperLink on SIGTERM; a SuperNode just ends
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


def _run_federation(tmp_path, tiny_llama_dir, kill_second_client: bool):
    port = free_port()
    out = tmp_path / "adapter"
    serve_argv = [
        *MODULE, "serve", "--insecure", "--host", "127.0.0.1", "--port", str(port), "--min-clients", "2",
        "--rounds", "2", "--local-steps", "1", "--r", "4", "--target-modules", "q_proj,v_proj",
        "--base", str(tiny_llama_dir), "--out", str(out), "--work-dir", str(tmp_path / "server"),
        "--round-timeout", "120", "--join-timeout", "120",
    ]  # fmt: skip
    procs = []
    try:
        server = Proc(serve_argv, _env(tmp_path, "server"), tmp_path)
        procs.append(server)
        assert server.wait_for("studio federated join --server", 60), server.output()
        clients = []
        for k in range(2):
            data = write_jsonl(tmp_path / f"site{k}.jsonl", chat_rows(8 + 4 * k))
            argv = [
                *MODULE,
                "join",
                "--server",
                f"127.0.0.1:{port}",
                "--data",
                str(data),
                "--base",
                str(tiny_llama_dir),
                "--insecure",
            ]
            clients.append(Proc(argv, _env(tmp_path, f"site{k}"), tmp_path))
            procs.append(clients[-1])
        if kill_second_client:  # SIGKILL the second site while it trains in round 1
            assert clients[1].wait_for("Start `flwr-clientapp` process", 60), clients[1].output()
            os.kill(clients[1].popen.pid, signal.SIGKILL)
        try:
            server.popen.wait(SERVER_LIMIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no result in {SERVER_LIMIT_S} s:\n{server.output()[-3000:]}")
        assert server.popen.returncode == 0, server.output()
        return json.loads((out / "federation.json").read_text()), out, server.output()
    finally:
        for proc in procs:
            proc.stop()


def _assert_loads_in_peft(adapter_dir, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), str(adapter_dir))
    names = [n for n, _ in model.named_parameters() if "lora_B" in n]
    assert names and any("q_proj" in n for n in names)


@pytest.mark.slow
def test_two_sites_two_rounds_give_a_peft_adapter(tmp_path, tiny_llama_dir, settings):
    summary, out, output = _run_federation(tmp_path, tiny_llama_dir, kill_second_client=False)
    assert summary["failures"] == {}
    assert len(summary["joined"]) == 2
    for rnd in ("1", "2"):
        rec = summary["per_round"][rnd]
        assert len(rec["client_loss"]) == 2 and all(v > 0 for v in rec["client_loss"].values())
        assert sorted(rec["client_rows"].values()) == [8, 12]  # each site's own file, read on the site
        assert rec["bytes_up"] > 0
    assert "registered as adapter" in output
    _assert_loads_in_peft(out, tiny_llama_dir)


@pytest.mark.slow
def test_a_site_killed_mid_round_is_recorded_and_the_run_finishes(tmp_path, tiny_llama_dir, settings):
    summary, out, _ = _run_federation(tmp_path, tiny_llama_dir, kill_second_client=True)
    assert "1" in summary["failures"] and len(summary["failures"]["1"]) == 1
    assert len(summary["per_round"]["1"]["client_loss"]) == 1  # round 1 aggregated the surviving site
    assert len(summary["per_round"]["2"]["client_loss"]) == 1
    _assert_loads_in_peft(out, tiny_llama_dir)


def test_register_adds_serve_and_join_to_a_group(tmp_path, tiny_llama_dir):
    group = click.Group("federated")
    register(group)
    assert set(group.commands) == {"serve", "join"}
    data = write_jsonl(tmp_path / "site.jsonl", chat_rows(4))
    result = CliRunner().invoke(
        group,
        [
            "join",
            "--server",
            "10.0.0.5:9092",
            "--data",
            str(data),
            "--base",
            str(tiny_llama_dir),
            "--insecure",
            "--print-only",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "--superlink 10.0.0.5:9092" in result.output and "--insecure" in result.output
    assert f'data-path="{data.resolve()}"' in result.output
    both = CliRunner().invoke(
        group, ["join", "--server", "h:1", "--data", str(data), "--insecure", "--root-cert", str(data)]
    )
    assert both.exit_code != 0 and "exactly one" in both.output


def test_supernode_command_refuses_a_missing_file_and_uses_tls(tmp_path, tiny_llama_dir):
    from studio.errors import StudioError

    with pytest.raises(StudioError, match="does not exist"):
        supernode_command("h:1", tmp_path / "nope.jsonl", tiny_llama_dir, Security(insecure=True))
    data = write_jsonl(tmp_path / "site.jsonl", chat_rows(2))
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    argv = supernode_command("h:1", data, tiny_llama_dir, Security(root_cert=ca), local_port=5555)
    assert argv[argv.index("--root-certificates") + 1] == str(ca) and "--insecure" not in argv
    assert argv[argv.index("--port") + 1] == "5555"
    with pytest.raises(StudioError, match="certificate"):
        Security(certs_dir=tmp_path).superlink_args()


def test_the_app_bundle_names_the_studio_apps(tmp_path):
    import tomllib

    app = write_app(tmp_path / "app", {"method": "ffa", "num-server-rounds": 2, "fraction": 0.5, "target-modules": ""})
    config = tomllib.loads((app / "pyproject.toml").read_text())
    flwr = config["tool"]["flwr"]["app"]
    assert flwr["components"] == {
        "serverapp": "studio.federated.site_apps:server_app",
        "clientapp": "studio.federated.site_apps:client_app",
    }
    assert flwr["config"] == {"method": "ffa", "num-server-rounds": 2, "fraction": 0.5, "target-modules": ""}
