"""The serving engine against PEFT: a mixed batch of adapters equals each request run alone on its PeftModel.

Tiny random Llama in fp32 on one thread; three adapters of different ranks (one
rsLoRA, one with rank_pattern/alpha_pattern) plus bare-base rows, prompts of
different lengths so left padding is exercised.
"""

from __future__ import annotations

import pytest
import torch

from studio.serving.engine import EngineRequest, ServingEngine

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18], [20, 21, 22], [30, 31, 32, 33], [40]]
# Adapter per prompt: every adapter, two base rows, one adapter used twice.
NAMES = ["r2", None, "r4_rslora", "r8_patterns", None, "r2"]
ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(base_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_dir)


@pytest.fixture(scope="module")
def references(base_dir, adapter_dirs, fresh_base):
    """name (None = bare base) -> the model computing that request alone: a PeftModel per adapter."""
    from peft import PeftModel

    models = {None: fresh_base(base_dir)}
    for name, path in adapter_dirs.items():
        models[name] = PeftModel.from_pretrained(fresh_base(base_dir), path).eval()
    return models


@pytest.fixture
def make_engine(base_dir, tokenizer, fresh_base):
    """An engine on a fresh copy of the base model."""

    def make(**kwargs) -> ServingEngine:
        return ServingEngine(fresh_base(base_dir), tokenizer, **kwargs)

    return make


def requests_for(adapter_dirs, names=NAMES, prompts=PROMPTS, **settings) -> list[EngineRequest]:
    settings = {"temperature": 0, "max_new_tokens": 6} | settings
    return [
        EngineRequest(prompt_ids=p, adapter=None if n is None else str(adapter_dirs[n]), **settings)
        for p, n in zip(prompts, names, strict=True)
    ]


def reference_tokens(model, prompt: list[int], max_new_tokens: int, eos: int) -> list[int]:
    """Greedy tokens from transformers' own generate, cut before eos as the engine reports them."""
    out = model.generate(
        input_ids=torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=0,
    )[0, len(prompt) :].tolist()
    return out[: out.index(eos)] if eos in out else out


@pytest.mark.parametrize("strategy", ["gather", "segments", "auto"])
def test_mixed_batch_logits_equal_each_request_alone_on_peft(
    make_engine, tokenizer, adapter_dirs, references, strategy
):
    engine = make_engine(slots=4)
    logits = engine.prompt_logits(requests_for(adapter_dirs), strategy=strategy)
    bare = references[None]
    for prompt, name, got in zip(PROMPTS, NAMES, logits, strict=True):
        with torch.no_grad():
            expected = references[name](input_ids=torch.tensor([prompt])).logits[0]
            base_only = bare(input_ids=torch.tensor([prompt])).logits[0]
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
        if name is not None:  # the adapter really changes the output, so the comparison means something
            assert (expected - base_only).abs().max() > 0.05


def test_mixed_batch_logits_equal_peft_adapter_names(make_engine, base_dir, adapter_dirs, fresh_base):
    """PEFT's own mixed-batch forward (``adapter_names``, "__base__" for none) gives the engine's logits."""
    from peft import PeftModel

    peft = PeftModel.from_pretrained(fresh_base(base_dir), adapter_dirs["r2"], adapter_name="r2")
    for name in ("r4_rslora", "r8_patterns"):
        peft.load_adapter(adapter_dirs[name], adapter_name=name)
    peft.eval()
    width = max(map(len, PROMPTS))
    ids = torch.zeros(len(PROMPTS), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, prompt in enumerate(PROMPTS):
        ids[i, width - len(prompt) :] = torch.tensor(prompt)
        mask[i, width - len(prompt) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = peft(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            adapter_names=[name or "__base__" for name in NAMES],
        ).logits
    got = make_engine(slots=4).prompt_logits(requests_for(adapter_dirs))
    for i, prompt in enumerate(PROMPTS):
        torch.testing.assert_close(got[i], expected[i, width - len(prompt) :], atol=ATOL, rtol=0)


def test_gather_and_segments_give_the_same_logits(make_engine, tokenizer, adapter_dirs):
    engine = make_engine(slots=4)
    requests = requests_for(adapter_dirs)
    gathered = engine.prompt_logits(requests, strategy="gather")
    segmented = engine.prompt_logits(requests, strategy="segments")
    for a, b in zip(gathered, segmented, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_greedy_generation_equals_peft_generate_per_request(make_engine, tokenizer, adapter_dirs, references):
    engine = make_engine(slots=4)
    results = engine.generate(requests_for(adapter_dirs, max_new_tokens=8))
    eos = tokenizer.eos_token_id
    for prompt, name, result in zip(PROMPTS, NAMES, results, strict=True):
        expected = reference_tokens(references[name], prompt, 8, eos)
        assert result.token_ids == expected
        assert result.finish_reason == ("length" if len(expected) == 8 else "eos")
        assert result.text == tokenizer.decode(expected, skip_special_tokens=True)


@pytest.mark.parametrize("strategy", ["gather", "segments"])
def test_both_strategies_generate_the_same_tokens(make_engine, tokenizer, adapter_dirs, strategy):
    auto = make_engine(slots=4).generate(requests_for(adapter_dirs))
    forced = make_engine(slots=4).generate(requests_for(adapter_dirs), strategy=strategy)
    assert [r.token_ids for r in forced] == [r.token_ids for r in auto]


def test_base_rows_equal_the_bare_base_model(make_engine, tokenizer, adapter_dirs, references):
    """Base rows next to adapter rows get exactly the bare model's logits (their slot 0 adds nothing)."""
    engine = make_engine(slots=4)
    logits = engine.prompt_logits(requests_for(adapter_dirs))
    for prompt, name, got in zip(PROMPTS, NAMES, logits, strict=True):
        if name is None:
            with torch.no_grad():
                expected = references[None](input_ids=torch.tensor([prompt])).logits[0]
            torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_batch_order_does_not_matter(make_engine, tokenizer, adapter_dirs):
    engine = make_engine(slots=4)
    order = [3, 0, 5, 1, 4, 2]
    forward = engine.generate(requests_for(adapter_dirs))
    shuffled = engine.generate(
        requests_for(adapter_dirs, names=[NAMES[i] for i in order], prompts=[PROMPTS[i] for i in order])
    )
    assert [shuffled[order.index(i)].token_ids for i in range(len(order))] == [r.token_ids for r in forward]
    logits = engine.prompt_logits(requests_for(adapter_dirs))
    logits_shuffled = engine.prompt_logits(
        requests_for(adapter_dirs, names=[NAMES[i] for i in order], prompts=[PROMPTS[i] for i in order])
    )
    for i in range(len(order)):
        torch.testing.assert_close(logits_shuffled[order.index(i)], logits[i], atol=ATOL, rtol=0)


def test_rows_joining_and_leaving_give_the_same_tokens(make_engine, tokenizer, adapter_dirs):
    """max_batch=2: requests wait, join between decode steps and leave when done; tokens are unchanged."""
    lengths = [2, 7, 3, 5, 1, 6]  # rows finish at different steps, so the batch changes under way
    requests = [
        r.model_copy(update={"max_new_tokens": n}) for r, n in zip(requests_for(adapter_dirs), lengths, strict=True)
    ]
    together = make_engine(slots=4).generate(requests)
    trickled = make_engine(slots=4, max_batch=2).generate(requests)
    assert [r.token_ids for r in trickled] == [r.token_ids for r in together]
    for n, result in zip(lengths, together, strict=True):
        assert len(result.token_ids) == n if result.finish_reason == "length" else len(result.token_ids) < n


def test_more_adapters_than_slots_pages_them_in_turn(make_engine, tokenizer, adapter_dirs):
    """One slot for three adapters: requests wait for the slot, adapters are paged in and out, tokens unchanged."""
    roomy = make_engine(slots=4).generate(requests_for(adapter_dirs))
    engine = make_engine(slots=1)
    tight = engine.generate(requests_for(adapter_dirs))
    assert [r.token_ids for r in tight] == [r.token_ids for r in roomy]
    assert list(engine.bank.resident()) == [str(adapter_dirs["r2"])]  # the last request's adapter stays
    assert engine.bank.pinned() == {}


def test_sampling_follows_each_row_s_own_seed(make_engine, tokenizer, adapter_dirs):
    """A sampled row gives the same tokens alone or among other rows: every row has its own generator."""
    engine = make_engine(slots=4)
    sampled = requests_for(adapter_dirs, temperature=1.3, top_p=0.8, seed=11, max_new_tokens=8)
    batch = engine.generate(sampled)
    for request, result in zip(sampled, batch, strict=True):
        assert engine.generate([request])[0].token_ids == result.token_ids
    reseeded = engine.generate([sampled[2].model_copy(update={"seed": 12})])[0]
    greedy = engine.generate([sampled[2].model_copy(update={"temperature": 0})])[0]
    assert reseeded.token_ids != batch[2].token_ids or greedy.token_ids != batch[2].token_ids


def test_stop_strings_and_chat_messages(make_engine, tokenizer, adapter_dirs):
    engine = make_engine(slots=4)
    chat = [{"role": "user", "content": "what color is the sky"}]
    free = engine.generate([EngineRequest(messages=chat, temperature=0, max_new_tokens=8)])[0]
    words = free.text.split()
    assert len(words) >= 3, free
    stop = words[2]
    stopped = engine.generate([EngineRequest(messages=chat, temperature=0, max_new_tokens=8, stop=[stop])])[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index(stop)]
    assert stopped.token_ids == free.token_ids[: len(stopped.token_ids)]


def test_request_needs_exactly_one_prompt():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="either prompt_ids or messages"):
        EngineRequest(temperature=0)
    with pytest.raises(ValidationError, match="either prompt_ids or messages"):
        EngineRequest(prompt_ids=[1], messages=[{"role": "user", "content": "hi"}])
