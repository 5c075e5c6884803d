"""scripts/merge_skills.py and scripts/mixture_skills.py: their own logic on tiny inputs (no real model, no data).

The PEFT ``cat`` merge the script registers must be the exact sum of its parents (checked on
the logits of a tiny random Llama); the share-of-gain arithmetic, the merge plan (LEGO's k
values), the set-up cache and the composite-prompt switch summary are checked directly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
from conftest_training import make_llama_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
for path in (REPO_ROOT, REPO_ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import merge_skills  # noqa: E402
import mixture_skills  # noqa: E402


def test_share_is_the_specialists_gain_kept():
    scores = {
        "base model": {"gsm8k": 2.0, "e2e": 3.0},
        "A: LoRA on GSM8K": {"gsm8k": 1.0, "e2e": 2.9},
        "B: LoRA on E2E": {"gsm8k": 1.9, "e2e": 2.0},
        "m": {"gsm8k": 1.25, "e2e": 3.5},
    }
    assert merge_skills.share(scores, "m", "gsm8k") == pytest.approx(0.75)
    assert merge_skills.share(scores, "m", "e2e") == pytest.approx(-0.5)  # worse than the base: a negative share


def test_merge_plan_lego_ks_deduplicated():
    args = argparse.Namespace(density=0.5)
    plan = merge_skills.merge_plan(args, [8, 8])
    lego = {label: fields["rank"] for label, fields in plan.items() if fields["method"] == "lego"}
    assert sorted(lego.values()) == [8, 16]  # mean r = Σr/2 = 8 for two rank-8 parents
    assert any("mean r = Σr/2" in label for label in lego)
    assert sorted(merge_skills.merge_plan(args, [4, 16]).keys()) != sorted(plan.keys())
    ks = {f["rank"] for f in merge_skills.merge_plan(args, [4, 16]).values() if f["method"] == "lego"}
    assert ks == {10, 20}
    methods = {fields["method"] for fields in plan.values()}
    assert {"linear", "peft cat", "ties", "dare_ties", "dare_linear", "lego"} <= methods


def test_cache_is_per_setup(tmp_path):
    cache = merge_skills.Cache(tmp_path, {"steps": "5"})
    cache.put("scores", "base model", {"gsm8k": 1.0})
    assert merge_skills.Cache(tmp_path, {"steps": "5"}).get("scores", "base model") == {"gsm8k": 1.0}
    assert merge_skills.Cache(tmp_path, {"steps": "6"}).get("scores", "base model") is None


def test_switch_summary_and_png(tmp_path):
    routed = {"maths_tokens": 2, "choices": {"l0.q_proj": [0, 0, 1, 1], "l0.mlp.down_proj": [0, 1, 1, 0]}}
    summary = mixture_skills.switch_summary(routed)
    assert summary == {"maths_part_to_gsm8k": 0.75, "restaurant_part_to_e2e": 0.75}
    png = mixture_skills.save_png(routed["choices"], 2, tmp_path / "h.png")
    from PIL import Image

    with Image.open(png) as image:
        assert image.size == (4 * 5 + 2, 2 * 6 + 2)
        assert image.getpixel((1, 1)) == mixture_skills.EXPERT_COLOURS[0]
        assert image.getpixel((1 + 3 * 5, 1)) == mixture_skills.EXPERT_COLOURS[1]


def test_peft_cat_is_the_sum_of_its_parents(tmp_path, monkeypatch):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "STUDIO_AUTH"):
        monkeypatch.delenv(name, raising=False)
    base_dir = make_llama_dir(tmp_path / "base")
    studio = merge_skills.Studio(tmp_path / "studio")
    ids = []
    for seed, rank in ((1, 2), (2, 4)):
        torch.manual_seed(seed)
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), config)
        out = tmp_path / f"lora{seed}"
        model.save_pretrained(out)
        row = studio.services.registry.add_adapter(
            name=f"lora{seed}",
            variant="lora",
            base_model=str(base_dir),
            dataset_id=None,
            ranks={"q_proj": rank, "v_proj": rank},
            trainable_params=1,
            size_bytes=1,
            path=str(out),
            sha256="x",
            source_job_id=None,
            parents=[],
            metrics={},
        )
        ids.append(row.id)

    result = merge_skills.peft_cat(studio, ids, "cat")
    assert result["rank_max"] == 6
    cat = studio.services.registry.get_adapter(result["adapter_id"])
    assert cat.variant == "merge" and cat.parents == ids

    ids_in = torch.tensor([[1, 5, 9, 3, 7]])
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), cat.path).eval()
    both = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(tmp_path / "lora1"))
    both.load_adapter(str(tmp_path / "lora2"), adapter_name="second")
    both.base_model.set_adapter(["default", "second"])  # two active LoRAs: their changes add up
    plain = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    with torch.no_grad():
        expected = both.eval()(input_ids=ids_in).logits
        got = merged(input_ids=ids_in).logits
        assert not torch.allclose(plain(input_ids=ids_in).logits, got, atol=1e-4)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_route_composite_marks_the_maths_part(tmp_path, monkeypatch):
    """The composite prompt's routing: every gated module has one choice per token; the cut is inside the prompt."""
    from composition.experts import load_base, save_expert
    from conftest_training import make_tokenizer

    from studio.composition.meteora import MeteoRAModel
    from studio.composition.meteora_bundle import save_bundle

    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "STUDIO_AUTH"):
        monkeypatch.delenv(name, raising=False)
    base_dir = make_llama_dir(tmp_path / "base")
    experts = [save_expert(base_dir, tmp_path / f"e{j}", seed=j, r=2, lora_alpha=4) for j in range(2)]
    bundle = tmp_path / "bundle"
    save_bundle(MeteoRAModel.from_adapters(load_base(base_dir), experts, top_k=1), bundle)
    make_tokenizer().save_pretrained(bundle)
    studio = merge_skills.Studio(tmp_path / "studio")

    maths = "two plus two"
    routed = mixture_skills.route_composite(
        str(bundle), str(base_dir), studio.settings, f"{maths}\nAlso: describe a cafe", maths
    )
    n = len(routed["tokens"])
    assert routed["choices"] and all(len(row) == n for row in routed["choices"].values())
    assert 0 < routed["maths_tokens"] < n
    assert all(set(row) <= {0, 1} for row in routed["choices"].values())
    shown = mixture_skills.heatmap_rows(routed["choices"])
    assert shown and set(shown) < set(routed["choices"])  # q_proj/down_proj rows only (the experts adapt q_proj)
    figure = tmp_path / "fig.json"
    mixture_skills.save_figure_json(shown, routed, figure)
    assert '"heatmap"' in figure.read_text()


# --- three skills (GSM8K, E2E, Alpaca) ---------------------------------------------------------------------------

THREE = ("gsm8k", "e2e", "alpaca")


def test_three_skill_merge_plan_and_labels():
    args = argparse.Namespace(density=0.5)
    plan = merge_skills.merge_plan(args, [8, 8, 8])
    ks = {fields["rank"] for fields in plan.values() if fields["method"] == "lego"}
    assert ks == {8, 12, 24}  # mean r, Σr/2, Σr of three rank-8 parents: all three run
    assert plan["linear, 1/3 each"] == {"method": "linear"}
    assert plan["linear, 1 + 1 + 1"]["weights"] == [1.0, 1.0, 1.0]
    assert plan["DARE-linear, density 0.5, 1 + 1 + 1"]["weights"] == [1.0, 1.0, 1.0]
    assert "PEFT cat, 1 + 1 + 1" in plan
    assert merge_skills.skills_of(argparse.Namespace(skills="gsm8k,e2e,alpaca")) == THREE
    assert merge_skills.skills_of({"base": "x"}) == ("gsm8k", "e2e")  # a two-skill record saved before --skills
    assert merge_skills.merge_prefix(THREE) == "merge of A, B and C: "
    assert merge_skills.merge_prefix(("gsm8k", "e2e")) == "merge of A and B: "


def test_score_runs_only_the_missing_tasks(tmp_path):
    class FakeStudio:
        def __init__(self):
            self.requests = []

        def run(self, request):
            self.requests.append(request)
            return {"metrics": {"eval_loss": 0.5 + request["dataset_id"]}}

    cache = merge_skills.Cache(tmp_path, {"k": "1"})
    cache.put("scores", "base model", {"gsm8k": 1.0, "e2e": 2.0})  # scored by the two-skill run
    studio = FakeStudio()
    data = {"gsm8k-test": 1, "e2e-dev": 2, "alpaca-test": 3}
    losses = merge_skills.score(studio, cache, data, "base model", {"base_model": "b"}, 12, THREE)
    assert losses == {"gsm8k": 1.0, "e2e": 2.0, "alpaca": 3.5}
    assert [r["dataset_id"] for r in studio.requests] == [3]
    assert merge_skills.score(studio, cache, data, "base model", {}, 12, THREE) == losses
    assert len(studio.requests) == 1  # all cached now


def test_alpaca_rows_from_the_in_repo_sample_import_as_chat(tmp_path, monkeypatch):
    from bench import common

    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "STUDIO_AUTH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(common, "SHARED_DATA", common.SAMPLES_DIR)
    rows = merge_skills.alpaca_rows("test.jsonl", 0, 3)
    assert len(rows) == 3 and set(rows[0]) == {"instruction", "input", "output"}
    studio = merge_skills.Studio(tmp_path / "studio")
    dataset = studio.services.registry.get_dataset(studio.dataset(common.write_jsonl(tmp_path / "a.jsonl", rows)))
    assert dataset.rows == 3


def test_switch_summary_of_three_parts():
    routed = {"maths_tokens": 2, "cuts": [2, 4], "choices": {"m0": [0, 0, 1, 2, 2, 2], "m1": [0, 1, 1, 1, 2, 0]}}
    summary = mixture_skills.switch_summary(routed, THREE)
    assert summary == {
        "maths_part_to_gsm8k": 0.75,
        "restaurant_part_to_e2e": 0.75,
        "instruction_part_to_alpaca": 0.75,
    }


def _record(skills, eval_loss):
    machine = {"cpu": "cpu", "cores": 2, "torch_threads": 1, "loadavg_1_5_15": [1.0, 1.0, 1.0]}
    machine["versions"] = {"torch": "2"}
    args = {"base": "b", "steps": 16, "train_rows": 64, "lr": 1e-3, "max_length": 256, "eval_rows": 12}
    args["skills"] = ",".join(skills)
    return {"args": args, "machine": machine, "loadavg_at_start": [1.0], "wall_seconds": 60, "eval_loss": eval_loss}


def test_merging_doc_has_the_three_skill_section(tmp_path):
    import json

    scores = {
        "base model": {"gsm8k": 2.0, "e2e": 2.0, "alpaca": 2.0},
        "A: LoRA on GSM8K": {"gsm8k": 1.0, "e2e": 2.0, "alpaca": 2.0},
        "B: LoRA on E2E": {"gsm8k": 2.0, "e2e": 1.0, "alpaca": 2.0},
        "C: LoRA on Alpaca": {"gsm8k": 2.0, "e2e": 2.0, "alpaca": 1.0},
        "merge of A, B and C: linear, 1/3 each": {"gsm8k": 1.5, "e2e": 1.5, "alpaca": 1.5},
        "merge of A, B and C: LEGO, k 24 (Σr)": {"gsm8k": 1.2, "e2e": 1.2, "alpaca": 1.2},
    }
    merges = {
        "linear, 1/3 each": {"method": "linear", "weights": [1 / 3] * 3, "rank_max": 24, "merge_max_error": 0.0},
        "LEGO, k 24 (Σr)": {"method": "lego", "weights": [1.0] * 3, "rank_max": 24, "merge_max_error": 0.0},
    }
    for m in merges.values():
        m["seconds"] = 1.0
    three = _record(THREE, scores)
    three.update(ranks=[8, 8, 8], merges=merges, partial=["TIES, density 0.5"])
    path = tmp_path / "three.json"
    path.write_text(json.dumps(three))
    text = merge_skills.render_doc(str(tmp_path / "missing.json"), str(path), "")
    assert "## Three skills: GSM8K, E2E and Alpaca" in text
    assert "| Alpaca test loss |" in text and "Alpaca (C's gain)" in text
    assert "| LEGO, k 24 (Σr) | 80 % | 80 % | 80 % | 80 % |" in text
    assert "Yes, here LoRA-LEGO beat" in text and "three specialists' gains" in text
    assert "**Partial run**" in text and "TIES, density 0.5" in text


def test_mixture_doc_puts_three_experts_first(tmp_path):
    import json

    def run(skills, per_task):
        prefix = merge_skills.merge_prefix(skills)
        label = "mix"
        scores = {"base model": dict.fromkeys(skills, 2.0), label: dict.fromkeys(skills, 1.02)}
        for skill in skills:
            scores[merge_skills.SPECIALISTS[skill]] = dict.fromkeys(skills, 1.0)
        for merge in mixture_skills.linear_merges(len(skills)):
            scores[prefix + merge] = dict.fromkeys(skills, 1.5)
        record = _record(skills, scores)
        record["args"].update(top_k=2, mixture_batch=4, mixture_lr=5e-3, mixture_max_length=128)
        record.update(
            label=label,
            mixture={"steps": 60, "seconds": 100.0, "gate_accuracy": 0.9},
            routing_test_rows={"accuracy": sum(per_task) / len(per_task), "per_task": per_task},
            composite={
                "prompt": "p",
                "tokens": 10,
                "maths_tokens": 3,
                "cuts": [3, 6][: len(skills) - 1],
                "modules": 210,
                "png": "h.png",
                "figure_json": "h.json",
            },
        )
        return record

    (tmp_path / "three.json").write_text(json.dumps(run(THREE, [0.95, 0.92, 0.91])))
    (tmp_path / "two.json").write_text(json.dumps(run(("gsm8k", "e2e"), [0.97, 0.23])))
    text = mixture_skills.render_doc(str(tmp_path / "two.json"), str(tmp_path / "three.json"))
    assert text.startswith("# A MeteoRA mixture on real data: the GSM8K, E2E and Alpaca specialists")
    head, earlier = text.split("## Earlier run: two experts (GSM8K, E2E), 60 router steps")
    assert "Below the 90 % target" not in head and "Below the 90 % target on E2E rows" in earlier
    assert "| Alpaca | 2.000 | 1.000 | 1.020 | +2.0 % | yes | 1.500 | 1.500 |" in head
    assert "linear, 1/3 each" in head and "rows truncated to 128 tokens" in head


def test_adopt_merges_scores_task_by_task(tmp_path):
    mine = merge_skills.Cache(tmp_path, {"k": "1"})
    theirs = merge_skills.Cache(tmp_path, {"k": "1"}, name="mixture_state.json")
    mine.put("scores", "base model", {"gsm8k": 1.0, "e2e": 2.0})
    theirs.put("scores", "base model", {"gsm8k": 9.0, "alpaca": 3.0})
    theirs.put("merges", "m", {"adapter_id": 7})
    merge_skills.adopt(mine, theirs, "scores", "base model")
    merge_skills.adopt(mine, theirs, "merges", "m")
    assert mine.get("scores", "base model") == {"gsm8k": 1.0, "e2e": 2.0, "alpaca": 3.0}  # its own values win
    assert merge_skills.Cache(tmp_path, {"k": "1"}).get("merges", "m") == {"adapter_id": 7}


def test_small_gain_note_names_a_weak_specialist():
    scores = {
        "base model": {"gsm8k": 2.0, "alpaca": 2.0},
        "A: LoRA on GSM8K": {"gsm8k": 1.0},
        "C: LoRA on Alpaca": {"alpaca": 1.9},
    }
    note = merge_skills.small_gain_note(scores, ("gsm8k", "alpaca"))
    assert len(note) == 2 and note[0].startswith("C gained only 5.0% on Alpaca") and "by 10%" in note[0]
    assert merge_skills.small_gain_note(scores, ("gsm8k",)) == []
