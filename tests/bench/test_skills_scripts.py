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
