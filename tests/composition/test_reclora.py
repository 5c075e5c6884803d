"""RecLoRA (spec §7): concatenated meta-LoRA forward, user gate, per-user PEFT export, bundle, training."""

from __future__ import annotations

import json

import pytest
import torch

from studio.composition.reclora import PersonalisedModel, RecLoRAConfig
from studio.composition.reclora_export import (
    export_user_adapter,
    load_bundle,
    save_bundle,
    user_factors,
)
from studio.composition.reclora_train import train_personalised, users_of

TARGETS = ["q_proj", "v_proj", "o_proj", "up_proj"]
USERS = ["alice", "bob", "carol"]
K, R, ALPHA = 3, 4, 8.0


def fresh_base(vocab_size: int = 256, seed: int = 0, init_range: float = 0.02):
    """The spec's tiny fixture: a 2-layer random Llama, fp32, identical for one seed.

    ``init_range`` above the default lets the frozen random head express confident logits, so
    that a training test can reach a low loss through the meta-LoRAs alone.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=init_range,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def config(**extra) -> RecLoRAConfig:
    return RecLoRAConfig(n_meta=K, rank=R, lora_alpha=ALPHA, target_modules=TARGETS, zero_init_b=False, **extra)


def personalised(features: torch.Tensor | None = None, **extra) -> PersonalisedModel:
    torch.manual_seed(1)
    pm = PersonalisedModel(fresh_base(), USERS, config(**extra), features=features).eval()
    with torch.no_grad():  # a gate far from uniform, so users differ clearly
        pm.gate.proj.weight.mul_(4.0)
    return pm


def ids(rows: int = 3, length: int = 7) -> torch.Tensor:
    return torch.randint(0, 256, (rows, length), generator=torch.Generator().manual_seed(3))


def logits(model, input_ids, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, **kw).logits


def meta_peft(pm: PersonalisedModel, ks: list[int]):
    """A plain PEFT model holding meta-LoRA k of ``pm`` as adapter ``m{k}`` for each k in ``ks``."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0, init_lora_weights=False)
    model = get_peft_model(fresh_base(), lora, adapter_name=f"m{ks[0]}")
    for k in ks[1:]:
        model.add_adapter(f"m{k}", lora)
    root = model.base_model.model
    with torch.no_grad():
        for name, layer in pm.meta_layers().items():
            target = root.get_submodule(name)
            for k in ks:
                target.lora_A[f"m{k}"].weight.copy_(layer.lora_A[k * R : (k + 1) * R])
                target.lora_B[f"m{k}"].weight.copy_(layer.lora_B[:, k * R : (k + 1) * R])
    return model.eval()


def test_defaults_are_k4_r8():
    cfg = RecLoRAConfig()
    assert (cfg.n_meta, cfg.rank, cfg.scale) == (4, 8, 2.0)
    assert RecLoRAConfig(rank=4, lora_alpha=8, use_rslora=True).scale == pytest.approx(4.0)


@pytest.mark.parametrize("k", [0, 2])
def test_one_hot_gate_equals_that_meta_lora_alone(k):
    pm = personalised()
    x = ids()
    one_hot = torch.zeros(1, K)
    one_hot[0, k] = 1.0
    peft_model = meta_peft(pm, [k])
    want = logits(peft_model, x)
    assert not torch.allclose(want, logits(fresh_base(), x), atol=1e-3)  # the meta-LoRA does change the model
    torch.testing.assert_close(logits(pm, x, alphas=one_hot), want, atol=1e-5, rtol=1e-5)


def test_layer_is_weighted_sum_of_products():
    pm = personalised()
    layer = pm.meta_layers()["model.layers.0.self_attn.q_proj"]
    alpha = torch.tensor([0.2, 0.5, 0.3])
    want = sum(alpha[k] * layer.lora_B[:, k * R : (k + 1) * R] @ layer.lora_A[k * R : (k + 1) * R] for k in range(K))
    torch.testing.assert_close(layer.delta_for(alpha), (ALPHA / R) * want.detach(), atol=1e-6, rtol=1e-5)
    x = torch.randn(2, 5, 64)
    with pm.using(alphas=alpha), torch.no_grad():
        got = layer(x)
    torch.testing.assert_close(got, layer.base_layer(x) + x @ layer.delta_for(alpha).T, atol=1e-5, rtol=1e-5)


def test_export_equals_mixture_and_loads_in_plain_peft(tmp_path):
    from peft import PeftModel

    pm = personalised()
    x = ids()
    out = export_user_adapter(pm, "bob", tmp_path / "bob")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == K * R and cfg["lora_alpha"] / cfg["r"] == pytest.approx(ALPHA / R)
    assert json.loads((out / "reclora_user.json").read_text())["known_user"] is True
    loaded = PeftModel.from_pretrained(fresh_base(), str(out)).eval()
    torch.testing.assert_close(logits(loaded, x), logits(pm, x, users=["bob"]), atol=1e-5, rtol=1e-5)
    # The in-memory factors are the exported ones: ΔW_u = s B_u A_u per module.
    factors = user_factors(pm, "bob")
    alpha = pm.alphas(["bob"])[0].detach()
    for name, (a, b, s) in factors.items():
        peft_layer = loaded.base_model.model.get_submodule(name)
        torch.testing.assert_close(peft_layer.get_delta_weight("default"), s * b @ a, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(s * b @ a, pm.meta_layers()[name].delta_for(alpha), atol=1e-6, rtol=1e-5)


def test_export_equals_peft_cat_weighted_adapter(tmp_path):
    from peft import PeftModel

    pm = personalised()
    x = ids()
    alpha = pm.alphas(["carol"])[0].detach()
    peft_model = meta_peft(pm, list(range(K)))
    names = [f"m{k}" for k in range(K)]
    peft_model.add_weighted_adapter(names, [float(a) for a in alpha], "carol", combination_type="cat")
    peft_model.set_adapter("carol")
    exported = PeftModel.from_pretrained(fresh_base(), str(export_user_adapter(pm, "carol", tmp_path / "c"))).eval()
    torch.testing.assert_close(logits(exported, x), logits(peft_model, x), atol=1e-5, rtol=1e-5)
    for name in pm.meta_layers():
        cat = peft_model.base_model.model.get_submodule(name).get_delta_weight("carol")
        ours = exported.base_model.model.get_submodule(name).get_delta_weight("default")
        torch.testing.assert_close(ours, cat, atol=1e-6, rtol=1e-5)


def test_batch_with_per_row_users_equals_loop_over_users():
    pm = personalised()
    x = ids(rows=4)
    users = ["carol", "alice", "bob", "alice"]
    batch = logits(pm, x, users=users)
    for row, user in enumerate(users):
        torch.testing.assert_close(batch[row], logits(pm, x[row : row + 1], users=[user])[0], atol=1e-5, rtol=1e-5)
    # ... and the users really differ, so the comparison above tests the per-row α.
    assert not torch.allclose(batch[1], logits(pm, x[1:2], users=["bob"])[0], atol=1e-4)


def test_padded_batch_with_mixed_users_equals_rows_alone():
    pm = personalised()
    x = ids(rows=2, length=6)
    mask = torch.ones_like(x)
    mask[1, 4:] = 0
    both = logits(pm, x, attention_mask=mask, users=["alice", "bob"])
    short = logits(pm, x[1:2, :4], users=["bob"])
    torch.testing.assert_close(both[1, :4], short[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["embedding", "features"])
def test_gate_and_meta_loras_get_gradients(mode):
    features = torch.randn(len(USERS), 5, generator=torch.Generator().manual_seed(0))
    pm = personalised(features=features, feature_dim=5) if mode == "features" else personalised()
    pm.train()
    x = ids()
    out = pm(input_ids=x, users=["alice", "carol", "carol"])
    out.logits.square().mean().backward()
    assert pm.gate.proj.weight.grad is not None and pm.gate.proj.weight.grad.abs().sum() > 0
    if mode == "embedding":
        grad = pm.gate.embedding.weight.grad
        assert grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0
        assert grad[1].abs().sum() == 0  # bob was not in the batch
    layer = pm.meta_layers()["model.layers.1.mlp.up_proj"]
    assert layer.lora_A.grad.abs().sum() > 0 and layer.lora_B.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in pm.model.named_parameters() if "lora_" not in n)
    assert {id(p) for p in pm.trainable_parameters()} == {id(p) for p in pm.parameters() if p.requires_grad}


def test_unknown_user_gets_mean_gate():
    pm = personalised()
    known = pm.alphas(USERS).detach()
    mean = known.mean(dim=0)
    mixed = pm.alphas(["bob", "stranger", None]).detach()
    torch.testing.assert_close(mixed[0], known[1])
    torch.testing.assert_close(mixed[1], mean)
    torch.testing.assert_close(mixed[2], mean)
    x = ids(rows=1)
    torch.testing.assert_close(logits(pm, x, users=["stranger"]), logits(pm, x, alphas=mean), atol=1e-6, rtol=1e-6)


def test_feature_gate_reads_features_and_new_users_with_features():
    features = torch.randn(len(USERS), 5, generator=torch.Generator().manual_seed(0))
    pm = personalised(features=features, feature_dim=5)
    got = pm.alphas(["bob"]).detach()[0]
    want = torch.softmax(pm.gate.proj(features[1]), dim=-1).detach()
    torch.testing.assert_close(got, want)
    new = [0.5, -1.0, 0.0, 2.0, 1.0]
    cold = pm.alphas(["newcomer"], features={"newcomer": new}).detach()[0]
    torch.testing.assert_close(cold, torch.softmax(pm.gate.proj(torch.tensor(new)), dim=-1).detach())
    with pytest.raises(ValueError):
        PersonalisedModel(fresh_base(), USERS, config(feature_dim=5), features=torch.zeros(2, 5))


@pytest.mark.parametrize("mode", ["embedding", "features"])
def test_bundle_round_trip(tmp_path, mode):
    features = torch.randn(len(USERS), 5, generator=torch.Generator().manual_seed(0))
    pm = personalised(features=features, feature_dim=5) if mode == "features" else personalised()
    save_bundle(pm, tmp_path / "bundle", base_model="tiny")
    again = load_bundle(fresh_base(), tmp_path / "bundle").eval()
    assert again.users == USERS and again.config.n_meta == K and again.config.rank == R
    x = ids(rows=4)
    users = ["bob", "alice", "nobody", "carol"]
    torch.testing.assert_close(logits(again, x, users=users), logits(pm, x, users=users), atol=0, rtol=0)


def test_model_without_users_refuses_to_run():
    pm = personalised()
    with pytest.raises(RuntimeError, match="without users"):
        logits(pm.model, ids())
    with pytest.raises(ValueError, match="2 users for a batch of 3"):
        logits(pm, ids(), users=["alice", "bob"])


def test_users_of_reads_any_grouping_column():
    from studio.errors import ValidationFailed

    rows = [{"text": "a", "persona": 7}, {"text": "b", "persona": "x"}, {"text": "c", "persona": 7}]
    assert users_of(rows, "persona") == ["7", "x"]
    with pytest.raises(ValidationFailed, match="row 2"):
        users_of([{"text": "a", "author": "z"}, {"text": "b"}], "author")


def test_training_learns_each_users_continuation(tmp_path):
    from conftest_training import make_tokenizer

    tokenizer = make_tokenizer()
    answers = {"sunny": "the sky is blue", "gloomy": "the sky is black"}

    def row(user: str) -> dict:
        q = {"role": "user", "content": "what color is the sky"}
        return {"customer": user, "messages": [q, {"role": "assistant", "content": answers[user]}]}

    rows = [row(u) for u in ("sunny", "gloomy")] * 4
    torch.manual_seed(0)
    base = fresh_base(vocab_size=len(tokenizer), init_range=0.3)
    cfg = RecLoRAConfig(n_meta=2, rank=4, lora_alpha=8, target_modules=TARGETS)
    pm = PersonalisedModel(base, users_of(rows, "customer"), cfg)
    seen = []
    run = train_personalised(
        pm,
        tokenizer,
        rows,
        user_column="customer",
        steps=30,
        batch_size=4,
        learning_rate=2e-2,
        max_length=32,
        progress=lambda step, total, loss: seen.append((step, total)),
    )
    assert seen[-1] == (30, 30) and run.steps == 30 and run.rows == 8
    assert sum(run.losses[-5:]) / 5 < 0.1 * sum(run.losses[:5]) / 5

    def answer_loss(user: str, answer_of: str) -> float:
        from studio.composition.reclora_train import encode_user_rows, personalised_loss
        from studio.training.data import collate

        example = encode_user_rows([row(answer_of)], tokenizer, "customer", max_length=32)[0]
        with torch.no_grad():
            return float(personalised_loss(pm, collate([example], tokenizer.pad_token_id), [user]))

    # Each user now prefers their own continuation: the gate separates them.
    # (one shared LoRA could at best split the odds: ~log 2 over the 5 answer tokens for both answers).
    assert answer_loss("sunny", "sunny") < 0.25 * answer_loss("sunny", "gloomy")
    assert answer_loss("gloomy", "gloomy") < 0.25 * answer_loss("gloomy", "sunny")


def test_generate_with_mixed_users_equals_each_user_alone():
    pm = personalised()
    x = ids(rows=2, length=4)
    with pm.using(["alice", "carol"]), torch.no_grad():
        both = pm.model.generate(input_ids=x, max_new_tokens=5, do_sample=False, pad_token_id=0)
    for row, user in enumerate(["alice", "carol"]):
        with pm.using(user), torch.no_grad():
            alone = pm.model.generate(input_ids=x[row : row + 1], max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert both[row].tolist() == alone[0].tolist()


def test_user_features_file_feeds_the_feature_gate(tmp_path):
    from studio.composition.user_features import features_matrix, read_user_features
    from studio.errors import ValidationFailed

    jsonl = tmp_path / "f.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"author": u, "features": [i, 1.0 - i, 0.5]}) + "\n" for i, u in enumerate(USERS))
    )
    csv_file = tmp_path / "f.csv"
    csv_file.write_text("author,x,y,z\n" + "".join(f"{u},{i},{1.0 - i},0.5\n" for i, u in enumerate(USERS)))
    from_jsonl = read_user_features(jsonl, "author")
    assert from_jsonl == read_user_features(csv_file, "author")
    matrix = features_matrix(from_jsonl, USERS)
    assert matrix.shape == (3, 3) and matrix[2].tolist() == [2.0, -1.0, 0.5]
    pm = personalised(features=matrix, feature_dim=3)
    torch.testing.assert_close(pm.gate.features, matrix)
    with pytest.raises(ValidationFailed, match="no feature vector"):
        features_matrix(from_jsonl, ["alice", "dave"])
    bad = tmp_path / "bad.csv"
    bad.write_text("author,x\nalice,1\nbob,oops\n")
    with pytest.raises(ValidationFailed, match="row 2"):
        read_user_features(bad, "author")


def test_training_with_activation_checkpointing_matches_plain_training():
    from conftest_training import chat_rows, make_tokenizer

    tokenizer = make_tokenizer()
    rows = [dict(row, persona=f"p{i % 3}") for i, row in enumerate(chat_rows(6))]

    def run(checkpointing: bool) -> list[float]:
        base = fresh_base(vocab_size=len(tokenizer), init_range=0.3)
        if checkpointing:
            base.gradient_checkpointing_enable()
        torch.manual_seed(2)
        cfg = RecLoRAConfig(n_meta=2, rank=2, lora_alpha=4, target_modules=TARGETS)
        pm = PersonalisedModel(base, users_of(rows, "persona"), cfg)
        return train_personalised(
            pm, tokenizer, rows, user_column="persona", steps=4, batch_size=3, learning_rate=2e-2
        ).losses

    plain, checkpointed = run(False), run(True)
    assert plain[-1] < plain[0]
    assert checkpointed == pytest.approx(plain, rel=1e-5)


def test_the_gate_learning_rate_moves_the_gate_alone():
    """``gate_learning_rate`` is the gate's own step size: at a near-zero rate the gate stays put while
    the meta-LoRAs learn; at the shared rate it moves."""
    from conftest_training import chat_rows, make_tokenizer

    tokenizer = make_tokenizer()
    rows = [dict(row, persona=f"p{i % 3}") for i, row in enumerate(chat_rows(6))]

    def gate_and_meta_change(gate_lr: float | None) -> tuple[float, float]:
        torch.manual_seed(3)
        base = fresh_base(vocab_size=len(tokenizer), init_range=0.3)
        cfg = RecLoRAConfig(n_meta=2, rank=2, lora_alpha=4, target_modules=TARGETS)
        pm = PersonalisedModel(base, users_of(rows, "persona"), cfg)
        gate_before = [p.detach().clone() for p in pm.gate.parameters()]
        meta_before = [p.detach().clone() for p in pm.trainable_parameters()[: -len(gate_before)]]
        train_personalised(
            pm,
            tokenizer,
            rows,
            user_column="persona",
            steps=4,
            batch_size=3,
            learning_rate=2e-2,
            gate_learning_rate=gate_lr,
        )
        gate_after = list(pm.gate.parameters())
        meta_after = pm.trainable_parameters()[: -len(gate_before)]
        gate = max((a - b).abs().max().item() for a, b in zip(gate_after, gate_before, strict=True))
        meta = max((a - b).abs().max().item() for a, b in zip(meta_after, meta_before, strict=True))
        return gate, meta

    frozen_gate, meta = gate_and_meta_change(1e-12)
    shared_gate, _ = gate_and_meta_change(None)
    assert frozen_gate < 1e-9 and meta > 1e-3
    assert shared_gate > 1e-3
