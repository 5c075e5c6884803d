"""Flower round trips in one process: the toy task learns, FFA halves the traffic, failed clients are skipped."""

from __future__ import annotations

import pytest
import torch
from conftest_training import chat_rows, write_jsonl

from studio.federated.flower_app import LocalUpdate, LoraStrategy, encode, make_client_app
from studio.federated.simulation import FederatedParams, LocalGrid, run_federated_simulation

SQUARE = ["q_proj", "o_proj"]  # hidden → hidden: B is exactly half of A + B


def simulate(tmp_path, tiny_llama_dir, name, **overrides):
    settings = dict(clients=3, rounds=2, local_steps=4, r=4, lora_alpha=8, learning_rate=2e-2, target_modules=SQUARE)
    params = FederatedParams(**{**settings, **overrides})
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(36))
    rounds = []
    result = run_federated_simulation(
        params,
        data_path=data,
        base_path=tiny_llama_dir,
        work_dir=tmp_path / f"work-{name}",
        out_dir=tmp_path / f"adapter-{name}",
        progress=rounds.append,
    )
    return result, rounds


@pytest.fixture(scope="module")
def run_method(tmp_path_factory, tiny_llama_dir):
    """The default simulation of a method, run once per module: its tests read the same run."""
    runs = {}

    def run(method):
        if method not in runs:
            runs[method] = simulate(tmp_path_factory.mktemp(f"sim-{method}"), tiny_llama_dir, method, method=method)
        return runs[method]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fedit", "ffa", "flora", "lora_fair"])
def test_federated_rounds_lower_validation_loss_and_export_peft(run_method, tiny_llama_dir, method):
    from peft import PeftModel

    from studio.training.models import load_base_model

    result, rounds = run_method(method)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert result.val_loss[2] < result.val_loss[0] - 0.05
    assert set(result.client_loss[1]) == {0, 1, 2} and all(v > 0 for v in result.client_loss[1].values())
    assert result.failures == {}
    assert sorted(i for p in result.partitions for i in p) == sorted(set(i for p in result.partitions for i in p))
    # the export is a standard PEFT LoRA that loads on the plain base
    model = PeftModel.from_pretrained(load_base_model(tiny_llama_dir, "causal-lm"), str(result.adapter_dir))
    assert model is not None
    if method == "flora":  # 2 rounds × 3 clients × rank 4, stacked
        assert set(result.ranks.values()) == {24}
    else:
        assert set(result.ranks.values()) == {4}
    if method == "lora_fair":
        before, after = result.fair_cosine[1]
        assert after >= before


@pytest.mark.slow
def test_ffa_sends_half_the_bytes_of_fedit(run_method):
    fedit, _ = run_method("fedit")  # the same runs as above: same clients, rounds and LoRA shapes
    ffa, _ = run_method("ffa")
    assert fedit.bytes_up[1] > 0
    assert ffa.bytes_up[1] * 2 == fedit.bytes_up[1]
    assert ffa.bytes_down[1] * 2 == fedit.bytes_down[1]


def test_a_failed_client_is_skipped_and_recorded():
    """Three nodes, node 2 raises in round 1: the round aggregates nodes 1 and 3, round 2 uses all three."""
    calls = []

    def trainer(partition, state, config):
        server_round = int(config["server-round"])
        calls.append((server_round, partition))
        if partition == 1 and server_round == 1:
            raise RuntimeError("disk full")
        value = float(partition + 1)
        return LocalUpdate({"m": (torch.full((2, 3), value), torch.full((4, 2), value))}, 10 * (partition + 1), value)

    strategy = LoraStrategy("fedit", min_train_nodes=3)
    start = encode({"m": (torch.zeros(2, 3), torch.zeros(4, 2))})
    result = strategy.start(LocalGrid(make_client_app(trainer), 3), start, num_rounds=2)
    assert strategy.failures == {1: {2: "RuntimeError: disk full"}}
    # round 1: weights 10 and 30 for values 1 and 3 -> 2.5; round 2: (10·1 + 20·2 + 30·3) / 60
    assert strategy.rounds[1].client_rows == {1: 10, 3: 30}
    a = result.arrays.to_torch_state_dict()["m|A"]
    torch.testing.assert_close(a, torch.full((2, 3), 140 / 60))
    assert sorted(calls) == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]


def test_sampling_is_seeded_per_round():
    strategy = LoraStrategy("fedit", fraction_train=0.5, min_train_nodes=2, seed=3)
    grid = LocalGrid(None, 6)
    from flwr.app import ConfigRecord

    first = [m.metadata.dst_node_id for m in strategy.configure_train(1, encode({}), ConfigRecord(), grid)]
    again = [
        m.metadata.dst_node_id
        for m in LoraStrategy("fedit", fraction_train=0.5, min_train_nodes=2, seed=3).configure_train(
            1, encode({}), ConfigRecord(), grid
        )
    ]
    assert len(first) == 3 and first == again


def test_the_simulation_says_what_it_does_before_round_0(tmp_path, monkeypatch):
    """Splitting and loading the server's base are reported as phases before any round reports."""

    class Stop(Exception):
        pass

    def loading_stops_here(*args, **kwargs):
        raise Stop

    monkeypatch.setattr("studio.federated.simulation.GlobalModel", loading_stops_here)
    params = FederatedParams(clients=3, rounds=2, local_steps=1, r=4, lora_alpha=8, target_modules=SQUARE)
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(12))
    phases: list[str] = []
    with pytest.raises(Stop):
        run_federated_simulation(
            params,
            data_path=data,
            base_path=tmp_path,
            work_dir=tmp_path / "w",
            out_dir=tmp_path / "a",
            phase=phases.append,
        )
    assert phases == ["splitting 12 rows among 3 clients", "loading the base model for the server"]
