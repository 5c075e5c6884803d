"""classifier_pooling: a pre-trained encoder's classifier reads all its window's tokens (mean / max)."""

from __future__ import annotations

import pytest
import torch

from studio.sequences.pooling import apply_classifier_pooling, attention_pool, classifier_pooling, pool_tokens
from studio.sequences.pretrain import build_encoder
from studio.sequences.tokenizers import build_tokenizer


def test_pool_tokens_by_hand():
    hidden = torch.tensor(
        [
            [[1.0, -2.0], [3.0, 4.0], [100.0, 100.0]],  # last token is padding
            [[0.0, 1.0], [2.0, -1.0], [4.0, 0.0]],
        ]
    )
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    mean = pool_tokens(hidden, mask, "mean")
    assert mean.shape == (2, 2)
    assert torch.allclose(mean, torch.tensor([[2.0, 1.0], [2.0, 0.0]]))
    assert torch.equal(pool_tokens(hidden, mask, "max"), torch.tensor([[3.0, 4.0], [4.0, 1.0]]))
    assert torch.allclose(pool_tokens(hidden, None, "mean")[0], torch.tensor([104 / 3, 34.0]))
    with pytest.raises(ValueError):
        pool_tokens(hidden, mask, "cls")


@pytest.fixture
def encoder_dir(tmp_path):
    def make(pooling, architecture="bert"):
        tokenizer = build_tokenizer("kmer", 3, model_max_length=32)
        model = build_encoder(tokenizer, 16, 1, 2, 32, seed=0, pooling=pooling, architecture=architecture)
        out = tmp_path / f"{architecture}-{pooling}"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return out, tokenizer

    return make


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_a_saved_encoder_classifies_with_its_pooling(encoder_dir, mode):
    from studio.training.models import load_base_model

    path, tokenizer = encoder_dir(mode)
    torch.manual_seed(0)
    model = load_base_model(path, "classification", labels=[0, 1]).eval()
    assert classifier_pooling(model.config) == mode
    assert not any("pooler" in name for name, _ in model.named_parameters())  # nothing random left untrained
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 13, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        states = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        by_hand = model.classifier(pool_tokens(states, mask, mode))
        alone = model(input_ids=ids[1:, :3], attention_mask=mask[1:, :3]).logits
    assert logits.shape == (2, 2)
    assert torch.allclose(logits, by_hand, atol=1e-6)
    assert torch.allclose(logits[1:], alone, atol=1e-5)  # padding does not change a window's logits

    # Saved and reloaded (as evaluation loads a base + adapter): the same pooling, the same logits.
    model.save_pretrained(path / "reloaded")
    again = load_base_model(path / "reloaded", "classification", labels=[0, 1]).eval()
    assert classifier_pooling(again.config) == mode
    with torch.no_grad():
        assert torch.allclose(again(input_ids=ids, attention_mask=mask).logits, logits, atol=1e-6)


def test_cls_pooling_is_the_default_and_leaves_bert_alone(encoder_dir):
    from studio.training.models import load_base_model

    path, _ = encoder_dir("cls")
    model = load_base_model(path, "classification", labels=[0, 1])
    assert classifier_pooling(model.config) == "cls"
    assert type(model.bert.pooler).__name__ == "BertPooler"
    from studio.schema import PretrainRequest

    assert PretrainRequest(dataset_id=1).classifier_pooling == "cls"


def test_cls_encoders_save_the_pooler_so_every_load_reads_cls_alike(encoder_dir):
    from studio.training.models import load_base_model

    path, _ = encoder_dir("cls")
    poolers = []
    for seed in (1, 2):  # the seed training sets before loading; evaluation sets none
        torch.manual_seed(seed)
        poolers.append(load_base_model(path, "classification", labels=[0, 1]).bert.pooler.dense.weight)
    assert torch.equal(poolers[0], poolers[1])


def test_token_pooling_refuses_a_model_without_a_bert_pooler():
    from types import SimpleNamespace

    model = torch.nn.Linear(2, 2)
    model.config = SimpleNamespace(classifier_pooling="mean")
    with pytest.raises(ValueError, match="BERT-like"):
        apply_classifier_pooling(model)
    model.config = SimpleNamespace(classifier_pooling="first")
    with pytest.raises(ValueError, match="one of"):
        apply_classifier_pooling(model)
    model.config = SimpleNamespace()
    assert apply_classifier_pooling(model) == "cls"


def roformer_head(head, pooled):
    """RoFormer's classification head by hand: dense, its activation, out_proj (dropout off in eval)."""
    return head.out_proj(torch.nn.functional.gelu(head.dense(pooled)))


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_a_roformer_classifier_pools_through_its_trained_head_also_under_peft(encoder_dir, mode):
    """RoFormer's head reads the first token; with mean/max it must read the pooling, also once PEFT copies the head."""
    from peft import LoraConfig, get_peft_model

    from studio.training.models import load_base_model

    path, _ = encoder_dir(mode, "roformer")
    model = load_base_model(path, "classification", labels=[0, 1]).eval()
    assert type(model).__name__ == "RoFormerForSequenceClassification"
    assert classifier_pooling(model.config) == mode
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 13, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        states = model.roformer(input_ids=ids, attention_mask=mask).last_hidden_state
        first_token = roformer_head(model.classifier, states[:, 0])
        assert torch.allclose(logits, roformer_head(model.classifier, pool_tokens(states, mask, mode)), atol=1e-6)
        assert not torch.allclose(logits, first_token, atol=1e-4)  # not what [CLS] alone gives
        alone = model(input_ids=ids[1:, :3], attention_mask=mask[1:, :3]).logits
    assert torch.allclose(logits[1:], alone, atol=1e-5)  # padding does not change a window's logits

    # As training wraps it: LoRA on the encoder, the head a trained copy (modules_to_save). The copy pools too.
    peft = get_peft_model(
        model, LoraConfig(r=2, target_modules=["query", "key", "value", "dense"], modules_to_save=["classifier"])
    ).eval()
    head = peft.base_model.model.classifier.modules_to_save["default"]
    with torch.no_grad():
        head.out_proj.bias.add_(torch.tensor([1.0, -1.0]))  # the copy now differs from the original head
        wrapped = peft(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(wrapped, roformer_head(head, pool_tokens(states, mask, mode)), atol=1e-5)


def test_a_roformer_cls_classifier_reads_the_first_token(encoder_dir):
    from studio.training.models import load_base_model

    path, _ = encoder_dir("cls", "roformer")
    model = load_base_model(path, "classification", labels=[0, 1]).eval()
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    with torch.no_grad():
        states = model.roformer(input_ids=ids).last_hidden_state
        assert torch.allclose(model(input_ids=ids).logits, roformer_head(model.classifier, states[:, 0]), atol=1e-6)


def test_attention_pool_by_hand():
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]])  # last token is padding
    mask = torch.tensor([[1, 1, 0]])
    # Equal scores: the mean of the kept tokens; padding gets no weight whatever its score.
    assert torch.allclose(attention_pool(hidden, mask, torch.tensor([[0.0, 0.0, 50.0]])), torch.tensor([[0.5, 0.5]]))
    # Scores ln 3 and 0: weights 3/4 and 1/4.
    scores = torch.tensor([[torch.log(torch.tensor(3.0)), 0.0, 0.0]])
    assert torch.allclose(attention_pool(hidden, mask, scores), torch.tensor([[0.75, 0.25]]), atol=1e-6)


@pytest.mark.parametrize("architecture", ["bert", "roformer"])
def test_attention_pooling_starts_as_the_mean_then_follows_its_trained_weights_also_under_peft(
    encoder_dir, architecture
):
    """Its weights ride in the head (trained and saved with it); a PEFT copy of the head weighs with its own copy."""
    from peft import LoraConfig, get_peft_model

    from studio.training.models import load_base_model

    path, _ = encoder_dir("attention", architecture)
    model = load_base_model(path, "classification", labels=[0, 1]).eval()
    assert classifier_pooling(model.config) == "attention"
    assert {n for n, _ in model.named_parameters() if "pooler" in n} == {
        "classifier.token_pooler.weigher.weight",
        "classifier.token_pooler.weigher.bias",
    }
    encoder = model.bert if architecture == "bert" else model.roformer

    def head(module, pooled):
        return module(pooled) if architecture == "bert" else roformer_head(module, pooled)

    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 13, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        states = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        untrained = model(input_ids=ids, attention_mask=mask).logits
        assert torch.allclose(untrained, head(model.classifier, pool_tokens(states, mask, "mean")), atol=1e-6)

    peft = get_peft_model(
        model, LoraConfig(r=2, target_modules=["query", "key", "value"], modules_to_save=["classifier"])
    ).eval()
    copy = peft.base_model.model.classifier.modules_to_save["default"]
    with torch.no_grad():
        copy.token_pooler.weigher.weight.copy_(torch.linspace(-2.0, 2.0, states.shape[-1]))
        wrapped = peft(input_ids=ids, attention_mask=mask).logits
        scores = states @ copy.token_pooler.weigher.weight.T
        by_hand = head(copy, attention_pool(states, mask, scores))
        alone = peft(input_ids=ids[1:, :3], attention_mask=mask[1:, :3]).logits
    assert not torch.allclose(wrapped, untrained, atol=1e-4)  # the weights matter
    assert torch.allclose(wrapped, by_hand, atol=1e-5)
    assert torch.allclose(wrapped[1:], alone, atol=1e-5)  # padding does not change a window's logits


def test_head_size_reads_the_output_layer_not_the_attention_pooler(tmp_path):
    """RoFormer's head keys sort out_proj < token_pooler: the pooler's [1, hidden] weight is not the head's output."""
    from safetensors.torch import save_file

    from studio.evaluation.loading import ADAPTER_WEIGHTS, head_size

    prefix = "base_model.model.classifier."
    save_file(
        {
            prefix + "dense.weight": torch.zeros(8, 8),
            prefix + "out_proj.weight": torch.zeros(3, 8),
            prefix + "token_pooler.weigher.weight": torch.zeros(1, 8),
        },
        str(tmp_path / ADAPTER_WEIGHTS),
    )
    assert head_size(tmp_path) == 3


@pytest.mark.parametrize("architecture", ["bert", "roformer"])
def test_a_whole_classifier_saved_with_its_trained_attention_pooler_loads_it_back(encoder_dir, architecture):
    """A merged export or fully fine-tuned model keeps the pooler's weights; transformers alone would drop them."""
    from studio.training.models import load_base_model

    path, _ = encoder_dir("attention", architecture)
    model = load_base_model(path, "classification", labels=[0, 1])
    with torch.no_grad():
        model.classifier.token_pooler.weigher.weight.normal_()
        model.classifier.token_pooler.weigher.bias.fill_(0.5)
    model.save_pretrained(path / "whole")
    again = load_base_model(path / "whole", "classification", labels=[0, 1])
    for name, value in model.classifier.token_pooler.state_dict().items():
        assert torch.equal(again.classifier.token_pooler.state_dict()[name], value), name
