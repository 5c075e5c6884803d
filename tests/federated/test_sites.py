"""Across sites on Flower's deployment runtime: a SuperLink and three SuperNodes as separate processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
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
# Flower 1.42 runs every message in a fresh `flwr-clientapp` process per site (in both isolation
# modes), which imports torch, and its SuperNode / ServerApp poll every 3 s: about 30 s a round on a
# busy 2-core machine; the killed site is only declared gone after 2 missed 30 s heartbeats. So one run
# proves both the round trip and the site killed mid-round: 140 s on a loaded machine (the two runs it
# replaces took 104 s + 130 s).
# None of these can be shortened from outside in flwr 1.42 (checked in its source): the SuperNode's heartbeat
# is the constant HEARTBEAT_DEFAULT_INTERVAL = 30 (flwr/common/constant.py, read by
# supernode/fleet_http_connection.py; no flag, env var or config) and the SuperLink refuses one under
# HEARTBEAT_MIN_INTERVAL = 10 s; the SuperNode's 3 s poll is a literal (supernode/start_client_internal.py).
# The only knob, FLWR_SUPEREXEC_TASK_POLL_INTERVAL, already defaults to 1 s.
SERVER_LIMIT_S = 400


def _env(tmp_path, name):
    env = {**os.environ, "FLWR_HOME": str(tmp_path / f"flwr-{name}"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.getcwd(), env.get("PYTHONPATH", "")] if p)
    return env


class Proc:
    """A child process whose merged output is collected line by line in a thread."""

    def __init__(self, argv, env, cwd):
        self.lines: list[str] = []
        # a session of its own: a site's SuperNode starts its ClientApp processes, and killing the
        # site (or cleaning up) must take them too, as a machine that goes down would
        self.popen = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
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

    def kill(self, sig=signal.SIGKILL):
        """Signal the process and everything it started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self):
        if self.popen.poll() is None:
            self.popen.terminate()  # serve stops its SuperLink on SIGTERM; a SuperNode stops its children
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
                self.popen.wait(10)
        self.kill()  # whatever the process left behind


def _run_federation(tmp_path, tiny_llama_dir, sites: int, kill: int | None):
    """Serve ``sites`` sites for two rounds; ``kill``: the site SIGKILLed as soon as it starts training in round 1."""
    port = free_port()
    out = tmp_path / "adapter"
    serve_argv = [
        *MODULE, "serve", "--insecure", "--host", "127.0.0.1", "--port", str(port), "--min-clients", str(sites),
        "--rounds", "2", "--local-steps", "1", "--r", "4", "--target-modules", "q_proj,v_proj",
        "--base", str(tiny_llama_dir), "--out", str(out), "--work-dir", str(tmp_path / "server"),
        "--round-timeout", "120", "--join-timeout", "120",
    ]  # fmt: skip
    procs = []
    try:
        server = Proc(serve_argv, _env(tmp_path, "server"), tmp_path)
        procs.append(server)
        assert server.wait_for("studio federated join --server", 120), server.output()
        clients = []
        for k in range(sites):
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
        if kill is not None:  # SIGKILL the site (SuperNode and its ClientApp) while it trains in round 1
            # the server waits for all the sites before round 1, so a site's first ClientApp is round 1's
            assert clients[kill].wait_for("Start `flwr-clientapp` process", 180), clients[kill].output()
            clients[kill].kill()
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


def _assert_trained(adapter_dir):
    """Aggregation happened: the first round broadcasts LoRA's B = 0, the export holds the sites' trained B."""
    from safetensors.torch import load_file

    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    b = [t for name, t in tensors.items() if "lora_B" in name]
    assert b and all(t.abs().max() > 0 for t in b)


@pytest.mark.slow
def test_three_sites_one_killed_mid_round_give_a_peft_adapter(tmp_path, tiny_llama_dir, settings):
    """A real round trip (SuperLink and three SuperNodes as processes) in which one site dies mid-round.

    One run proves both: the two live sites' updates are aggregated in both rounds into a PEFT
    adapter, and the killed site is recorded under its own id while the run goes on. (Two runs
    paid Flower's start-up and 30 s heartbeat floor twice.)
    """
    summary, out, output = _run_federation(tmp_path, tiny_llama_dir, sites=3, kill=2)
    assert len(summary["joined"]) == 3
    assert list(summary["failures"]) == ["1"]  # round 2 only sampled the sites still there
    [(dead, why)] = summary["failures"]["1"].items()
    assert dead in summary["joined"]  # recorded under the site's own id, not the SuperLink's
    assert "Node Unavailable" in why or "timeout" in why
    alive = set(summary["joined"]) - {dead}
    assert len(alive) == 2
    assert sorted(summary["per_round"]["1"]["sampled"]) == sorted(summary["joined"])
    assert sorted(summary["per_round"]["2"]["sampled"]) == sorted(alive)
    for rnd in ("1", "2"):  # both rounds aggregated both live sites, each training on its own file
        rec = summary["per_round"][rnd]
        assert set(rec["client_loss"]) == alive and all(v > 0 for v in rec["client_loss"].values())
        assert sorted(rec["client_rows"].values()) == [8, 12]  # the killed site had 16 rows
        assert rec["bytes_up"] > 0
    assert "registered as adapter" in output
    _assert_loads_in_peft(out, tiny_llama_dir)
    _assert_trained(out)


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


def test_a_node_the_superlink_reports_unavailable_is_recorded_under_its_own_id(monkeypatch):
    """A dead site's error reply comes from the SuperLink (src node 1), not from the site itself."""
    import torch
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message
    from flwr.supercore.task_identity import TaskIdentity

    from studio.federated.flower_app import WEIGHT_KEY, LoraStrategy, encode

    # the identity of a ServerApp's task, as Flower's runtime sets it before the ServerApp runs
    for attr, value in {"_task_id": 1, "_run_id": 1, "_node_id": SUPERLINK_NODE_ID}.items():
        monkeypatch.setattr(TaskIdentity, attr, value)

    class TwoNodes:
        def get_node_ids(self):
            return [5, 7]

    torch.manual_seed(0)
    initial = {"layer.q_proj": (torch.randn(2, 3), torch.zeros(3, 2))}
    strategy = LoraStrategy("fedit", min_train_nodes=2)
    sent = list(strategy.configure_train(1, encode(initial), ConfigRecord(), TwoNodes()))
    for msg in sent:  # what Flower's grid does when it pushes them
        msg.metadata.__dict__["_message_id"] = msg.object_id
    to_node = {msg.metadata.dst_node_id: msg for msg in sent}
    trained = {"layer.q_proj": (torch.randn(2, 3), torch.randn(3, 2))}
    ok = Message(
        RecordDict({"arrays": encode(trained), "metrics": MetricRecord({WEIGHT_KEY: 4, "train_loss": 1.5})}),
        reply_to=to_node[5],
    )
    gone = create_message_error_unavailable_res_message(to_node[7].metadata, "node_unavail")
    assert gone.metadata.src_node_id not in (5, 7)  # Flower answers as the SuperLink
    arrays, _ = strategy.aggregate_train(1, [ok, gone])
    record = strategy.rounds[1]
    assert list(record.failed) == [7] and "Node Unavailable" in record.failed[7]
    assert record.client_loss == {5: 1.5}
    got = arrays.to_torch_state_dict()
    assert torch.allclose(got["layer.q_proj|B"], trained["layer.q_proj"][1])  # the survivor's update, alone
