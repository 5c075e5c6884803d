"""hyper.head_learning_rate: a classifier's head gets its own AdamW group (and peak rate)."""

from __future__ import annotations

import torch

from studio.training.loop import head_param_groups
from studio.variants.base import OptimConfig, default_optimization


def _peft_classifier():
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    base = BertForSequenceClassification(config)
    lora = LoraConfig(r=2, target_modules=["query", "value"], modules_to_save=["classifier"], task_type="SEQ_CLS")
    return get_peft_model(base, lora)


def test_head_gets_its_own_group_and_rate():
    model = _peft_classifier()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert head_param_groups(model, ["classifier"], None) == trainable  # default: one group, as before
    body, head = head_param_groups(model, ["classifier"], 0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)].rsplit(".", 1)[-1] for p in head["params"]) == ["bias", "weight"]
    assert all("classifier.modules_to_save" in names[id(p)] for p in head["params"])
    assert all("lora_" in names[id(p)] for p in body["params"])
    assert len(body["params"]) + len(head["params"]) == len(trainable)
    cfg = OptimConfig(learning_rate=0.01, weight_decay=0.0, total_steps=10, warmup_steps=0, scheduler="linear")
    optimization = default_optimization([body, head], cfg)
    optimizer, scheduler = optimization.optimizers[0], optimization.schedulers[0]
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.5]
    optimizer.step()
    scheduler.step()  # the schedule scales each group's own peak
    assert [round(g["lr"], 6) for g in optimizer.param_groups] == [0.009, 0.45]
