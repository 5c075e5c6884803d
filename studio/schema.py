"""Typed job requests: the one schema shared by the UI, the CLI, the Celery payload and the registry.

Each request is a pydantic model with a ``kind`` discriminator. A job row stores
``request.model_dump(mode="json")`` plus ``SCHEMA_VERSION``; the worker parses it
back with :func:`parse_request`. Field descriptions, ranges and choices are
what the UI renders as labels, help texts, sliders and dropdowns.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from studio.errors import ValidationFailed
from studio.merging.registry import METHOD_NAMES, METHODS

SCHEMA_VERSION = 1


class StudioModel(BaseModel):
    """Base of every request: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class CheckRequest(StudioModel):
    """A short self-test job: fits a small regression on the worker's device.

    It exercises the whole path (queue, worker, device, registry, progress,
    metrics, cancel) in seconds, so it is what `studio status --check` and the
    integration tests submit.
    """

    kind: Literal["check"] = "check"
    steps: int = Field(20, ge=1, le=100_000, description="Optimisation steps to run.")
    step_seconds: float = Field(0.0, ge=0.0, le=60.0, description="Pause after each step, to watch progress.")
    seed: int = Field(0, ge=0, description="Random seed of the synthetic problem.")
    fail_at_step: int | None = Field(None, ge=1, description="Raise an error at this step (tests the failure path).")


class TrainingHyperParams(StudioModel):
    """Optimisation settings shared by every variant (variant-specific ones live in the variant schema)."""

    learning_rate: float = Field(2e-4, gt=0, le=1.0, description="Peak learning rate of AdamW.")
    epochs: float = Field(
        1.0, gt=0, le=100, description="Passes over the training split (ignored when max_steps is set)."
    )
    max_steps: int | None = Field(None, ge=1, le=1_000_000, description="Stop after this many optimizer steps.")
    batch_size: int = Field(8, ge=1, le=512, description="Examples per optimizer step (before accumulation).")
    grad_accum: int = Field(1, ge=1, le=256, description="Micro-batches accumulated into one optimizer step.")
    max_length: int = Field(512, ge=16, le=32_768, description="Longer examples are truncated to this many tokens.")
    warmup_ratio: float = Field(0.03, ge=0, le=0.5, description="Fraction of steps spent warming up the learning rate.")
    weight_decay: float = Field(0.0, ge=0, le=1.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, le=100, description="Gradient clipping threshold (0 = off).")
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="Learning-rate schedule.")
    loss_on: Literal["response", "full"] = Field(
        "response", description="Compute the loss on the response only (default) or on the whole text."
    )
    validation_fraction: float = Field(0.05, ge=0, le=0.5, description="Share of rows held out for validation.")
    max_eval_rows: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Score at most this many validation rows in each validation pass (a fixed, seeded "
        "sample of the held-out rows); empty = all of them. Each pass costs a forward pass per row.",
    )
    log_every: int = Field(5, ge=1, le=10_000, description="Report training metrics every N steps.")
    eval_every: int = Field(50, ge=1, le=100_000, description="Compute validation loss every N steps.")
    save_every: int = Field(100, ge=1, le=100_000, description="Write a resumable checkpoint every N steps.")
    keep_checkpoints: int = Field(
        0,
        ge=0,
        le=100,
        description="Also keep N adapters along training, evenly spaced over its last half (the last one is "
        "the final adapter), as PEFT LoRAs in the adapter's checkpoints/ folder: what an ICM-LoRA generator "
        "learns from. 0 = keep none.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Compute precision; auto picks the fastest the device supports (bf16 autocast on CPUs "
        "with native bf16 and on recent GPUs, fp16 with a grad scaler on older GPUs, else fp32). "
        "Adapter weights always stay fp32.",
    )
    group_by_length: bool = Field(
        True,
        description="Batch rows of similar length together (less padding, faster); the groups are shuffled "
        "with the seed, so the order still varies and is reproducible.",
    )
    packing: bool = Field(
        False,
        description="Pack several short rows into one sequence (text generation only); each row still "
        "attends only to itself, so the loss is the same as without packing.",
    )
    gradient_checkpointing: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Recompute activations in the backward pass to save memory; auto turns it on when the "
        "memory estimate says memory is tight.",
    )
    window_loss: Literal["per_window", "pooled_mean", "pooled_max", "pooled_sum"] = Field(
        "per_window",
        description="Classifiers reading long sequences as windows: per_window trains every window on its "
        "sequence's label (weighted so that each sequence counts once) and predicts with the mean of the "
        "windows' logits; pooled_mean / pooled_max / pooled_sum put a sequence's windows in one batch, pool their "
        "logits (mean; a smooth max for a label that one window anywhere decides, like a motif; a sum for "
        "evidence that adds up over windows, like a long coding stretch) and apply the "
        "loss once per sequence; evaluation pools the same way. With pooling, batch_size counts sequences.",
    )
    head_learning_rate: float | None = Field(
        None,
        gt=0,
        le=1.0,
        description="Peak learning rate of a classifier's head (trained in full), when it should differ from "
        "learning_rate: a new head on a small encoder's pooled features often needs a much larger one than the "
        "LoRA factors. Empty: learning_rate. Variants with their own optimizer ignore it.",
    )
    loss_chunk_tokens: int = Field(
        1024,
        ge=0,
        le=1_000_000,
        description="Compute the loss only at labelled tokens, this many at a time, so full-vocabulary "
        "logits for the whole batch are never held at once (0 = plain full logits).",
    )
    processes: int = Field(
        1,
        ge=1,
        le=64,
        description="Train with this many processes on the worker's host (torch.distributed, data parallel): "
        "each takes its share of every step's examples (the effective batch stays batch_size × grad_accum) and "
        "the adapter's gradients are summed across them. On GPUs one process per GPU; on a CPU the cores are "
        "shared out between them.",
    )
    nodes: int = Field(
        1,
        ge=1,
        le=64,
        description="Hosts the job runs on, each with `processes` processes (world size nodes × processes). "
        "The worker that takes the job is node 0 and opens a rendezvous on STUDIO_RDZV_HOST:STUDIO_RDZV_PORT; "
        "the other nodes are `studio worker --join-distributed` processes on other hosts. Rank 0 alone reports "
        "and saves.",
    )
    fsdp: bool = Field(
        False,
        description="Shard the base's decoder layers across the processes (FSDP2) while training, for a base "
        "that does not fit one device. Most variants (those that refuse say why); checkpoints and resume as "
        "usual; every rank validates mid-run; no kept adapters (keep_checkpoints); rank 0 holds the whole base "
        "again after the last step to validate and save.",
    )

    @model_validator(mode="after")
    def _check_processes(self) -> TrainingHyperParams:
        from studio.training.distributed_rules import hyper_refusal

        reason = hyper_refusal(self)
        if reason:
            raise ValueError(reason)
        return self


class TrainRequest(StudioModel):
    """Fine-tune ``base_model`` on a registered dataset with one LoRA variant."""

    kind: Literal["train"] = "train"
    name: str | None = Field(None, max_length=200, description="Name of the resulting adapter.")
    dataset_id: int = Field(..., ge=1, description="Registered dataset to train on.")
    base_model: str = Field(..., min_length=1, description="Bundled model name, Hugging Face id or local directory.")
    task: Literal["causal-lm", "classification"] = Field("causal-lm", description="What the model learns to do.")
    variant: str = Field("lora", description="Name of a registered LoRA variant.")
    variant_params: dict[str, Any] = Field(
        default_factory=dict, description="Variant parameters, validated against the variant's own schema."
    )
    hyper: TrainingHyperParams = Field(default_factory=TrainingHyperParams)
    seed: int = Field(42, ge=0, description="Seed for initialisation, shuffling and dropout.")
    resume_from_job: int | None = Field(None, ge=1, description="Continue from this job's last checkpoint.")
    transfer_kit: bool = Field(
        True,
        description="Keep a transfer kit with the adapter (5 seed rows + a small discriminator), so that it can "
        "later be carried to another base without this dataset (text generation with chat rows only).",
    )

    @model_validator(mode="after")
    def _check_variant_across_processes(self) -> TrainRequest:
        from studio.training.distributed_rules import variant_refusal

        reason = variant_refusal(self.variant, self.hyper.processes * self.hyper.nodes, self.hyper.fsdp)
        if reason:
            raise ValueError(reason)
        return self


MAX_COMPARED_ADAPTERS = 8


class EvalRequest(StudioModel):
    """Evaluate the bare base model and/or adapters of that base on one registered dataset, side by side.

    The models compared are the base (when ``base_model`` is given) and every adapter of
    ``adapter_id`` and ``adapter_ids``; all adapters must be of one base model. With the
    base among them, each score also gets its difference against the base.
    """

    kind: Literal["eval"] = "eval"
    adapter_id: int | None = Field(None, ge=1, description="An adapter to evaluate (one; see adapter_ids for more).")
    adapter_ids: list[int] = Field(
        default_factory=list,
        max_length=MAX_COMPARED_ADAPTERS,
        description="Adapters to compare, all of one base model.",
    )
    base_model: str | None = Field(
        None, description="Also evaluate this bare base model, the reference each adapter is compared against."
    )
    dataset_id: int = Field(..., ge=1, description="Held-out dataset.")
    metrics: list[Literal["loss", "exact_match", "accuracy", "rouge_l"]] = Field(
        default_factory=lambda: ["loss"], description="What to compute."
    )
    max_examples: int = Field(200, ge=1, le=100_000, description="Evaluate on at most this many rows.")
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Generation budget (tokens per answer) for exact_match and rouge_l. Empty: sized from the "
        "dataset, 1.25 × the longest reference answer + 8, at most the studio's cap; answers cut off by the "
        "budget are counted and shown beside the scores.",
    )
    seed: int = Field(0, ge=0)
    ranks: list[int] = Field(
        default_factory=list,
        description="DyLoRA adapters only: also measure the loss at each of these ranks (metric vs rank).",
    )
    include_baseline: bool = Field(
        False,
        description="Classification datasets: also fit a logistic regression on simple features (k-mer "
        "frequencies, length and longest ORF for DNA/RNA) on the training rows and score it on these rows, "
        "beside the models. Scores accuracy too (the baseline's measure), with a paired test of each model "
        "against it.",
    )
    baseline_dataset_id: int | None = Field(
        None,
        ge=1,
        description="Rows the baseline is fit on. Empty: the training dataset of the first adapter.",
    )

    @model_validator(mode="after")
    def _check_models(self) -> EvalRequest:
        ids = self.adapters()
        if any(i < 1 for i in self.adapter_ids):
            raise ValueError("adapter_ids: ids start at 1")
        if len(ids) > MAX_COMPARED_ADAPTERS:
            raise ValueError(f"adapter_ids: at most {MAX_COMPARED_ADAPTERS} adapters in one comparison")
        if not ids and not self.base_model:
            raise ValueError("give a base model, an adapter, or both to compare")
        if self.ranks and (len(ids) != 1 or self.base_model):
            raise ValueError("ranks: measure the loss by rank of one DyLoRA adapter alone, without a comparison")
        if self.baseline_dataset_id is not None and not self.include_baseline:
            raise ValueError("baseline_dataset_id: set include_baseline to fit the baseline")
        if self.baseline_dataset_id == self.dataset_id:
            raise ValueError("baseline_dataset_id: the baseline must be fit on other rows than it is scored on")
        if self.include_baseline and "accuracy" not in self.metrics:
            # The baseline is scored by accuracy, F1, MCC and AUROC: the models beside it must be too, or the
            # table would set its accuracy against nothing and no paired test could run.
            self.metrics = [*self.metrics, "accuracy"]
        return self

    def adapters(self) -> list[int]:
        """Every adapter to evaluate, in the order given, each once."""
        first = [self.adapter_id] if self.adapter_id is not None else []
        return list(dict.fromkeys(first + list(self.adapter_ids)))


# The merge methods of studio.merging.registry (one line there adds a method here, in the CLI and the UI).
MergeMethodName = Literal[METHOD_NAMES]  # type: ignore[valid-type]


class MergeRequest(StudioModel):
    """Combine adapters of one base model into a new plain LoRA adapter."""

    kind: Literal["merge"] = "merge"
    name: str | None = Field(None, max_length=200, description="Name of the merged adapter.")
    adapter_ids: list[int] = Field(
        ..., min_length=1, max_length=8, description="Adapters to combine; all must be for the same base model."
    )
    method: MergeMethodName = Field(
        "linear",
        description="linear: the weighted sum of the adapters' weight changes (one adapter: resize it to a "
        "new rank). ties: TIES-merging, which keeps each adapter's largest changes, elects a sign for every "
        "weight and averages only the changes that agree: less interference between adapters trained for "
        "different tasks. dare_linear / dare_ties: first drop a random share of each adapter's changes and "
        "scale up the rest (DARE), then sum or elect like ties. lego: LoRA-LEGO pools the rank units of all "
        "the LoRAs and clusters them (k-means) into the rank units of one LoRA; plain LoRAs of the same "
        "target modules only.",
    )
    weights: list[float] | None = Field(
        None,
        description="One weight per adapter, in order (a negative weight subtracts an adapter's effect). "
        "Empty: linear and dare_linear average the adapters (1/n each); ties, dare_ties and lego use 1 each, "
        "since they average the agreeing changes (lego: the clustered units) themselves.",
    )
    density: float = Field(
        0.2,
        gt=0.0,
        le=1.0,
        description="ties and dare: the share of each adapter's weight changes kept (ties keeps the largest, "
        "dare a random share, scaled up to make up for the rest).",
    )
    rank: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Rank of the merged adapter in every module. Empty: the sum of the adapters' ranks "
        "there, which is exact for a linear merge; smaller ranks make a smaller adapter and report the "
        "share of the change they lose. lego: the number of clusters k; empty: the adapters' mean rank "
        "(a k below the number of rank units prunes).",
    )
    seed: int = Field(
        0, ge=0, description="Seed of DARE's random drops and of lego's k-means (linear and ties use no randomness)."
    )
    param_reweight: bool = Field(
        True,
        description="lego: scale each cluster centre to its members' mean norm (parameter reweighting), "
        "since averaging units shrinks them.",
    )
    output_reweight: Literal["sqrt_r_over_k", "none"] | float = Field(
        "sqrt_r_over_k",
        description="lego: factor on the merged change (output reweighting). sqrt_r_over_k: √(mean rank / k), "
        "none: 1, or a number.",
    )

    @model_validator(mode="after")
    def _check_lists(self) -> MergeRequest:
        if len(set(self.adapter_ids)) != len(self.adapter_ids):
            raise ValueError("adapter_ids: each adapter may appear only once")
        if any(i < 1 for i in self.adapter_ids):
            raise ValueError("adapter_ids: ids start at 1")
        if self.weights is not None and len(self.weights) != len(self.adapter_ids):
            given, wanted = len(self.weights), len(self.adapter_ids)
            raise ValueError(f"weights: give one weight per adapter ({given} given for {wanted} adapters)")
        if self.weights is not None and not any(self.weights):
            raise ValueError("weights: at least one weight must be non-zero")
        if isinstance(self.output_reweight, float) and not self.output_reweight > 0:
            raise ValueError("output_reweight: a factor must be above 0 (or sqrt_r_over_k, or none)")
        return self

    @field_validator("output_reweight", mode="before")
    @classmethod
    def _output_reweight_text(cls, value: Any) -> Any:
        """'0.5' (the CLI, a typed dropdown value) is a number; any other unknown word is refused by this field's name."""
        if isinstance(value, str) and value.strip() not in ("sqrt_r_over_k", "none"):
            try:
                return float(value)
            except ValueError:
                raise ValueError("give sqrt_r_over_k, none or a number above 0") from None
        return value

    def resolved_weights(self) -> list[float]:
        """The weights the merge uses: as given, else 1/n each for the sums and 1 each for ties and lego."""
        n = len(self.adapter_ids)
        if self.weights is not None:
            return list(self.weights)
        return [1.0 / n] * n if METHODS[self.method].averages else [1.0] * n


class MixtureSettings(StudioModel):
    """MeteoRA mixture settings (composition spec §2 defaults): routing plus the router training run.

    Shared by the mixture job's request, its form, the CLI and
    :func:`studio.composition.meteora_training.train_mixture`.
    """

    top_k: int = Field(
        2, ge=1, le=64, description="Experts each token uses in every layer (at most the number of experts)."
    )
    temperature: float = Field(
        1.0,
        gt=0,
        le=100,
        description="Softmax temperature over the chosen experts' router scores; 1 in training, 15-30 blends "
        "experts more evenly for prompts that mix several tasks.",
    )
    gate_loss_weight: float = Field(
        50.0, ge=0, le=1000, description="Weight of the routing loss (which expert belongs to each example's task)."
    )
    train_experts: bool = Field(False, description="Also fine-tune the experts' LoRA weights (default: routers only).")
    strategy: Literal["auto", "gather", "loop"] = Field(
        "auto",
        description="How the chosen experts are computed: gather (one batched matmul over every token and expert), "
        "loop (one matmul per expert), or auto (gather for short inputs, loop for long ones). Same results.",
    )
    learning_rate: float = Field(5e-4, gt=0, le=1.0, description="Peak learning rate of AdamW.")
    epochs: float = Field(
        1.0, gt=0, le=100, description="Passes over all experts' rows (ignored when max_steps is set)."
    )
    max_steps: int | None = Field(None, ge=1, le=1_000_000, description="Stop after this many optimizer steps.")
    batch_size: int = Field(8, ge=1, le=512, description="Examples per optimizer step, drawn from all tasks.")
    max_length: int = Field(512, ge=16, le=32_768, description="Longer examples are truncated to this many tokens.")
    warmup_ratio: float = Field(
        0.005, ge=0, le=0.5, description="Fraction of steps spent warming up the learning rate."
    )
    weight_decay: float = Field(0.01, ge=0, le=1.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(0.3, ge=0, le=100, description="Gradient clipping threshold (0 = off).")
    loss_on: Literal["response", "full"] = Field(
        "response", description="Language-model loss on the response only (default) or on the whole text."
    )
    log_every: int = Field(5, ge=1, le=10_000, description="Report training metrics every N steps.")
    seed: int = Field(42, ge=0, description="Seed of the routers' initialisation, the shuffling and dropout.")


# Validation context key: the dataset's column names, when the caller has them (the job service does).
DATASET_COLUMNS = "dataset_columns"


def missing_column_message(column: str, columns: list[str]) -> str:
    """'the dataset has no column 'x'; its columns: a, b, c' (shared by the schema and the job handler)."""
    listed = ", ".join(repr(c) for c in columns) if columns else "(none recorded)"
    return f"the dataset has no column {column!r}; its columns: {listed}"


class PersonaliseRequest(StudioModel):
    """RecLoRA: K shared meta-LoRAs per module mixed per user by a learned gate, trained on a dataset with a user column.

    The result is a *bundle* (meta-LoRAs + gate + user map), registered as an adapter of
    variant ``reclora``; any user's adapter exports as a standard PEFT LoRA of rank K·r.
    ``user_column`` is checked against the dataset's columns when the validation context
    holds them (``{"dataset_columns": [...]}``, as the job service passes it).
    """

    kind: Literal["personalise"] = "personalise"
    name: str | None = Field(None, max_length=200, description="Name of the resulting personalised adapter.")
    dataset_id: int = Field(..., ge=1, description="Registered dataset whose rows name their user.")
    user_column: str = Field(
        ..., min_length=1, max_length=200, description="The column naming each row's user (customer, persona, author)."
    )
    user_features_path: str | None = Field(
        None,
        description="Optional JSONL/JSON/CSV file of per-user feature vectors (see studio.composition.user_features); "
        "set: the gate reads the features instead of learning an embedding per user.",
    )
    base_model: str = Field(..., min_length=1, description="Bundled model name, Hugging Face id or local directory.")
    n_meta: int = Field(4, ge=1, le=64, description="K: meta-LoRAs per module (the paper suggests 4-8).")
    rank: int = Field(8, ge=1, le=256, description="r: rank of each meta-LoRA; a user's export has rank K·r.")
    lora_alpha: float = Field(16.0, gt=0, le=4096, description="Scale s = lora_alpha / r of every meta-LoRA.")
    target_modules: list[str] | None = Field(
        None, description="Linear layer names to adapt; empty: every attention and MLP linear."
    )
    gate_dim: int = Field(16, ge=1, le=4096, description="Size of the learned per-user embedding.")
    steps: int = Field(100, ge=1, le=1_000_000, description="Optimizer steps.")
    batch_size: int = Field(8, ge=1, le=512, description="Rows per step (users mixed within a batch).")
    learning_rate: float = Field(1e-3, gt=0, le=1.0, description="AdamW learning rate of meta-LoRAs and gate.")
    gate_learning_rate: float | None = Field(
        None,
        gt=0,
        le=1.0,
        description="AdamW learning rate of the user gate alone; empty = the learning rate above. A larger one "
        "helps the gate tell users apart when the run is short.",
    )
    max_length: int = Field(512, ge=16, le=32_768, description="Longer rows are truncated to this many tokens.")
    loss_on: Literal["response", "full"] = Field("response", description="Loss on the response only, or everything.")
    log_every: int = Field(5, ge=1, le=10_000, description="Report the loss every N steps.")
    seed: int = Field(42, ge=0, description="Seed of initialisation and shuffling.")

    @field_validator("user_column")
    @classmethod
    def _known_column(cls, value: str, info: ValidationInfo) -> str:
        columns = (info.context or {}).get(DATASET_COLUMNS)
        if columns is not None and value not in columns:
            raise ValueError(missing_column_message(value, list(columns)))
        return value

    def reclora_config(self, feature_dim: int | None = None):
        """The RecLoRAConfig this request builds (feature mode when ``feature_dim`` is given)."""
        from studio.composition.reclora import RecLoRAConfig

        return RecLoRAConfig(
            n_meta=self.n_meta,
            rank=self.rank,
            lora_alpha=self.lora_alpha,
            target_modules=self.target_modules,
            gate_dim=self.gate_dim,
            feature_dim=feature_dim,
        )


# Names of pre-trained encoders: they become base model names and folder names, so no paths or spaces.
BASE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
ENCODER_SIZES = ("auto", "tiny", "small", "base")
ENCODER_ARCHITECTURES = ("bert", "roformer")


class PretrainRequest(StudioModel):
    """Pre-train a small BERT-style encoder from scratch on a dataset's sequences (masked-language modelling).

    The result is registered as a base model (encoder + its sequence tokenizer) that later
    classification training jobs pick by ``name``.
    """

    kind: Literal["pretrain"] = "pretrain"
    name: str | None = Field(
        None,
        pattern=BASE_NAME_PATTERN,
        description="Name of the new base model (letters, digits, '.', '_' or '-'). Empty: "
        "seq-encoder-<dataset>-<job>.",
    )
    dataset_id: int = Field(
        ..., ge=1, description="Registered dataset whose sequences the encoder learns (train rows)."
    )
    sequence_column: str | None = Field(
        None, description="Column holding the sequences. Empty: the one the dataset import detected."
    )
    tokenizer: Literal["auto", "nucleotide", "kmer", "codon", "protein"] = Field(
        "auto",
        description="auto: what the import proposed (overlapping 3-mers for DNA/RNA, single letters for proteins); "
        "nucleotide: one token per base; kmer: overlapping k-mers; codon: non-overlapping 3-mers read in each of "
        "the three reading frames (a sequence becomes three token sequences); protein: one token per amino acid.",
    )
    k: int | None = Field(None, ge=3, le=6, description="k of a k-mer tokenizer (3 to 6). Empty: the proposed k.")
    architecture: Literal[ENCODER_ARCHITECTURES] = Field(  # type: ignore[valid-type]
        "bert",
        description="bert: BERT with learnt absolute positions (LoRA-BERT's encoder); roformer: the same encoder with "
        "rotary (relative) positions, which learns rules such as 'a start codon, then no stop codon for N codons' "
        "far faster and lets LoRA's query/key updates use positions.",
    )
    size: Literal[ENCODER_SIZES] = Field(  # type: ignore[valid-type]
        "auto",
        description="Encoder size: tiny (hidden 64, 2 layers), small (128, 4), base (256, 6); auto picks from "
        "the number of training tokens and the device. hidden_size/num_layers/num_heads override it.",
    )
    hidden_size: int | None = Field(None, ge=16, le=1024, description="Width of the encoder (overrides size).")
    num_layers: int | None = Field(None, ge=1, le=24, description="Transformer layers (overrides size).")
    num_heads: int | None = Field(None, ge=1, le=16, description="Attention heads; must divide hidden_size.")
    max_length: int = Field(
        512,
        ge=16,
        le=4096,
        description="Window length in tokens (the encoder's position limit); longer sequences are read as "
        "overlapping windows.",
    )
    window_overlap: int = Field(64, ge=0, le=2048, description="Tokens shared by neighbouring windows.")
    classifier_pooling: Literal["cls", "mean", "max", "attention"] = Field(
        "cls",
        description="How a classifier built on this encoder summarises a window, saved with the encoder: cls: "
        "the [CLS] token (through BERT's pooler; RoFormer's head reads it directly); mean / max: the mean / max "
        "of all the window's token states (no pooler weights), so a motif anywhere in the window reaches the head; "
        "attention: a learnt weight per token (trained with the head, starting as the mean), so a short stretch "
        "such as a small reading frame is not averaged away by the rest of a long window.",
    )
    mask_prob: float = Field(
        0.15,
        gt=0.0,
        lt=1.0,
        description="Share of tokens masked (k-mers: whole spans of k tokens, so a masked k-mer cannot be read "
        "from its overlapping neighbours).",
    )
    epochs: float = Field(1.0, gt=0, le=1000, description="Passes over the windows (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, le=1_000_000, description="Stop after this many optimizer steps.")
    batch_size: int = Field(16, ge=1, le=1024, description="Windows per optimizer step.")
    learning_rate: float = Field(5e-4, gt=0, le=1.0, description="Peak AdamW learning rate (linear warm-up and decay).")
    warmup_ratio: float = Field(0.06, ge=0, le=0.5, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(0.01, ge=0, le=1.0, description="AdamW weight decay.")
    validation_fraction: float = Field(
        0.05, ge=0, le=0.5, description="Share of the sequences held out to report the masked-LM validation loss."
    )
    extra_dataset_id: int | None = Field(
        None, ge=1, description="Another dataset of unlabelled sequences to pre-train on as well (never a test set)."
    )
    log_every: int = Field(10, ge=1, le=100_000, description="Report the training loss every N steps.")
    eval_every: int = Field(100, ge=1, le=1_000_000, description="Compute the validation loss every N steps.")
    save_every: int = Field(200, ge=1, le=1_000_000, description="Write a resumable checkpoint every N steps.")
    seed: int = Field(42, ge=0, description="Seed of the initialisation, the masks and the order.")

    @model_validator(mode="after")
    def _check_shape(self) -> PretrainRequest:
        if self.extra_dataset_id is not None and self.extra_dataset_id == self.dataset_id:
            raise ValueError("extra_dataset_id: give another dataset than dataset_id")
        if self.k is not None and self.tokenizer not in ("auto", "kmer"):
            raise ValueError("k: only k-mer tokenizers take a k")
        if self.hidden_size and self.num_heads and self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads: {self.num_heads} heads must divide hidden_size {self.hidden_size}")
        if self.window_overlap >= self.max_length - 2:
            raise ValueError("window_overlap: must be smaller than the window (max_length − 2 tokens)")
        return self


MAX_EXPERTS = 16  # experts of one mixture: every gated layer holds all of them


class MixtureRequest(StudioModel):
    """Build a MeteoRA mixture of LoRA adapters of one base model and train its routers (composition spec §2).

    Expert ``j`` is ``adapter_ids[j]``; ``dataset_ids[j]`` holds the rows of the task it was
    trained for, which label every one of its rows with task ``j`` for the routing loss. The
    result is a registered adapter of variant ``mixture`` (a bundle: routers + references to
    its experts, which are its parents). ``steps`` and ``seed`` set the run's ``max_steps``
    and ``seed`` in ``settings``.
    """

    kind: Literal["mixture"] = "mixture"
    name: str | None = Field(None, max_length=200, description="Name of the mixture adapter.")
    adapter_ids: list[int] = Field(
        ...,
        min_length=1,
        max_length=MAX_EXPERTS,
        description="The expert adapters (plain LoRA, at least 2), all for the same base model, in task order.",
    )
    dataset_ids: list[int] = Field(
        ...,
        min_length=1,
        max_length=MAX_EXPERTS,
        description="One labelled dataset per expert, in the same order: the task each expert was trained for.",
    )
    settings: MixtureSettings = Field(default_factory=lambda: MixtureSettings(), description="Routing and training.")
    steps: int | None = Field(
        None, ge=1, le=1_000_000, description="Router training steps (empty: settings.epochs passes over the rows)."
    )
    seed: int = Field(42, ge=0, description="Seed of the routers, the shuffling, dropout and the held-out split.")
    validation_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Share of each dataset held out to measure how often the routers pick the task's own expert.",
    )

    @model_validator(mode="after")
    def _check_lists(self) -> MixtureRequest:
        if len(self.adapter_ids) < 2:
            raise ValueError(f"adapter_ids: a mixture needs at least 2 expert adapters ({len(self.adapter_ids)} given)")
        if len(set(self.adapter_ids)) != len(self.adapter_ids):
            raise ValueError("adapter_ids: each adapter may be an expert only once")
        if any(i < 1 for i in self.adapter_ids + self.dataset_ids):
            raise ValueError("adapter_ids, dataset_ids: ids start at 1")
        if len(self.dataset_ids) != len(self.adapter_ids):
            given, wanted = len(self.dataset_ids), len(self.adapter_ids)
            raise ValueError(
                f"dataset_ids: give one dataset per expert adapter, in the same order ({given} given for {wanted} "
                "adapters)"
            )
        if self.settings.top_k > len(self.adapter_ids):
            raise ValueError(
                f"settings.top_k: at most the number of experts ({len(self.adapter_ids)}), not {self.settings.top_k}"
            )
        # The run reads its step count and seed from settings: keep one source of truth.
        update: dict[str, Any] = {"seed": self.seed}
        if self.steps is not None:
            update["max_steps"] = self.steps
        self.settings = self.settings.model_copy(update=update)
        return self


# ICM-LoRA generators (studio.adapter_generation): sizes of the CVAE, see studio.adapter_generation.cvae.
GENERATOR_PRESETS = ("tiny", "small", "paper")


class GeneratorRequest(StudioModel):
    """ICM-LoRA: train a generator (a conditional VAE) on the adapters of several tasks, one base model and one shape.

    Each adapter is one task: the generator learns its checkpoints kept along training
    (``keep_checkpoints`` when it was trained; the final adapter alone otherwise), conditioned
    on the task vector that the base model computes from the first ~30 rows of the adapter's
    training dataset. The generator is registered as an adapter of variant ``icm_generator``
    whose parents are the source adapters.
    """

    kind: Literal["generator"] = "generator"
    name: str | None = Field(None, max_length=200, description="Name of the generator.")
    adapter_ids: list[int] = Field(
        ...,
        min_length=2,
        max_length=64,
        description="Adapters of at least two tasks, all of one base model with the same rank and target modules; "
        "each must still have its training dataset.",
    )
    preset: Literal[GENERATOR_PRESETS] = Field(  # type: ignore[valid-type]
        "small",
        description="Size of the generator network: tiny (tests and tiny models), small (the paper's depth with "
        "narrower layers, sized for the bundled 135M model), paper (the published widths; wants a GPU).",
    )
    epochs: int = Field(200, ge=1, le=100_000, description="Passes over all the checkpoints.")
    learning_rate: float = Field(2e-4, gt=0, le=1.0, description="AdamW learning rate (cosine-annealed to 0).")
    examples: int = Field(
        30, ge=1, le=1000, description="Rows of each task's dataset the task vector is computed from."
    )
    seed: int = Field(2024, ge=0, description="Seed of the initialisation, batch order and sampling noise.")

    @field_validator("adapter_ids")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("each adapter may be given once (each one is a task)")
        return value


class GenerateRequest(StudioModel):
    """ICM-LoRA: a new adapter for a task from about 30 of its examples, made by a trained generator (no training)."""

    kind: Literal["generate"] = "generate"
    name: str | None = Field(None, max_length=200, description="Name of the generated adapter.")
    generator_id: int = Field(..., ge=1, description="A registered generator (variant icm_generator).")
    dataset_id: int = Field(..., ge=1, description="Examples of the new task; the first `examples` rows are read.")
    examples: int = Field(30, ge=1, le=1000, description="Rows the task vector is computed from.")
    seed: int = Field(2024, ge=0, description="Seed of the generator's sample (another seed, another adapter).")


# Trans-LoRA (studio/transfer): the kit kept with a causal-LM adapter and the transfer's settings ----------
# They live here, not in studio/transfer/options.py (which re-exports them), because TransferRequest
# embeds them and they embed TrainingHyperParams: one module, no import cycle.


class FewShotFormat(BaseModel):
    """How the seeds are shown to a base model so that it writes one more task input.

    The prompt is plain text (no chat template), so base and instruct models alike continue it::

        {header}\\n{prefix} {seed 1}\\n{prefix} {seed 2}\\n...\\n{prefix}

    The model's continuation up to the first line break is the new input.
    """

    model_config = ConfigDict(extra="forbid")

    header: str = Field("Examples of task inputs:", description="First line of the few-shot prompt.")
    prefix: str = Field("Input:", description="Written before every example and where the model continues.")


def _discriminator_hyper() -> TrainingHyperParams:
    return TrainingHyperParams(
        learning_rate=1e-3, epochs=3, batch_size=8, max_length=256, validation_fraction=0.0, eval_every=100_000
    )


def _student_hyper() -> TrainingHyperParams:
    return TrainingHyperParams(learning_rate=5e-4, epochs=3, batch_size=8, max_length=512, validation_fraction=0.0)


class KitOptions(BaseModel):
    """What a transfer kit keeps and how its discriminator is trained."""

    model_config = ConfigDict(extra="forbid")

    seeds: int = Field(5, ge=1, le=64, description="Seed examples kept with the adapter (the paper keeps 5).")
    positives: int = Field(64, ge=2, le=10_000, description="Real task inputs the discriminator sees (at most).")
    discriminator_base: str | None = Field(
        None, description="Model directory the discriminator LoRA is trained on; empty = the adapter's own base."
    )
    discriminator_r: int = Field(8, ge=1, le=256, description="Rank of the discriminator LoRA.")
    question: str = Field(
        "Is this a real input of the task? Answer yes or no.",
        description="Put before each input when the discriminator is asked; it answers yes or no.",
    )
    fewshot: FewShotFormat = Field(default_factory=FewShotFormat)
    temperature: float = Field(1.0, gt=0, le=2.0, description="Sampling temperature of the generated negatives.")
    top_p: float = Field(0.95, ge=0.05, le=1.0)
    max_input_tokens: int = Field(64, ge=4, le=1024, description="Longest generated input, in tokens.")
    hyper: TrainingHyperParams = Field(default_factory=_discriminator_hyper)
    seed: int = Field(0, ge=0)


class TransferOptions(BaseModel):
    """How much synthetic data a transfer makes, how it is filtered and how the student is trained."""

    model_config = ConfigDict(extra="forbid")

    samples: int = Field(
        64,
        ge=0,
        le=100_000,
        description="Synthetic inputs to keep (the paper keeps |D|); 0 = none: the student learns the source's "
        "answers to the kit's seeds only (the paper's seeds-only ablation).",
    )
    max_attempts: int = Field(
        512, ge=1, le=1_000_000, description="Stop generating after this many inputs, kept or not."
    )
    threshold: float = Field(0.5, ge=0.0, lt=1.0, description="Keep an input when the discriminator's P(real) > this.")
    use_filter: bool = Field(True, description="Off: keep every generated input (the paper's unfiltered ablation).")
    generation_batch: int = Field(16, ge=1, le=256, description="Inputs written per engine call.")
    temperature: float = Field(1.0, gt=0, le=2.0, description="Sampling temperature of the target's inputs.")
    top_p: float = Field(0.95, ge=0.05, le=1.0)
    max_input_tokens: int = Field(64, ge=4, le=1024, description="Longest generated input, in tokens.")
    max_answer_tokens: int = Field(128, ge=1, le=1024, description="Longest teacher answer, in tokens.")
    r: int | None = Field(
        None,
        ge=1,
        le=1024,
        title="Rank (r)",
        description="Rank of the new adapter: how much it can learn. Higher can learn more but makes a bigger, "
        "slower adapter; 8 or 16 suits most tasks. Empty = the same rank as the adapter you transfer.",
    )
    lora_alpha: float | None = Field(None, gt=0, description="Alpha of the student LoRA; empty = the source's.")
    target_modules: list[str] | None = Field(
        None, description="Target layers on the new base; empty = every linear layer of its blocks."
    )
    hyper: TrainingHyperParams = Field(default_factory=_student_hyper)
    seed: int = Field(
        0,
        ge=0,
        description="Any whole number; it fixes the random choices (the inputs written, the new adapter's start "
        "and training order), so the same seed and settings give the same adapter. Change it to try another run.",
    )


class TransferRequest(StudioModel):
    """Trans-LoRA: carry a causal-LM adapter to another base model with synthetic data, no training set needed.

    The source adapter must have a transfer kit (5 seeds + a discriminator, kept when it was trained
    with ``transfer_kit`` on). The result is a plain PEFT LoRA on ``target_base`` with the source as parent.
    """

    kind: Literal["transfer"] = "transfer"
    name: str | None = Field(None, max_length=200, description="Name of the transferred adapter.")
    adapter_id: int = Field(..., ge=1, description="The adapter to transfer (it needs a transfer kit).")
    target_base: str = Field(
        ..., min_length=1, description="The new base: bundled model name, local model directory or Hugging Face id."
    )
    options: TransferOptions = Field(default_factory=TransferOptions)

    @property
    def seed(self) -> int:
        """The transfer's seed (the job row records every request's seed)."""
        return self.options.seed


# Sweeps: a search space over training and variant settings, searched by Optuna (studio.sweeps) ----------


class FloatRange(StudioModel):
    """Search a float setting between ``low`` and ``high`` (on a log scale with ``log``)."""

    type: Literal["float"] = "float"
    low: float = Field(..., description="Smallest value tried.")
    high: float = Field(..., description="Largest value tried.")
    log: bool = Field(False, description="Sample on a log scale (learning rates); needs low > 0.")

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class IntRange(StudioModel):
    """Search an integer setting from ``low`` to ``high`` inclusive (on a log scale with ``log``)."""

    type: Literal["int"] = "int"
    low: int = Field(..., description="Smallest value tried.")
    high: int = Field(..., description="Largest value tried.")
    log: bool = Field(False, description="Sample on a log scale (ranks); needs low >= 1.")

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low < 1:
            raise ValueError("a log range needs low >= 1")
        return self


class Choices(StudioModel):
    """Try each of these values of a setting (numbers, words or booleans)."""

    type: Literal["categorical"] = "categorical"
    choices: list[bool | int | float | str] = Field(..., min_length=1, max_length=64, description="Values tried.")

    @model_validator(mode="after")
    def _distinct(self) -> Choices:
        if len({repr(c) for c in self.choices}) != len(self.choices):
            raise ValueError("each choice may appear only once")
        return self


SearchParam = Annotated[FloatRange | IntRange | Choices, Field(discriminator="type")]
SWEEP_OBJECTIVES = {"eval_loss": "minimize", "eval_accuracy": "maximize"}
SWEEP_PRUNERS = ("median", "hyperband", "none")
# The space's key whose choices are variant names: the variant itself is searched (compare mode).
SWEEP_VARIANT_KEY = "variant"


class SweepRequest(StudioModel):
    """Search training and variant settings with Optuna: every trial is an ordinary ``train`` job.

    ``space`` maps a setting to its range or choices. Names are training settings
    (``learning_rate``) or the variant's parameters (``r``), or prefixed ``hyper.`` / ``variant.``
    where a name is both; studio.sweeps.space checks them against the schemas' types and bounds.
    ``hyper`` and ``variant_params`` are the fixed settings of every trial.
    """

    kind: Literal["sweep"] = "sweep"
    mode: Literal["search", "compare"] = Field(
        "search",
        description="search: Optuna searches the space; compare: one trial per variant of the space's `variant` "
        "choices at the same budget (same data, seed, steps, validation split), no pruning; the sweep then shows "
        "the variant comparison table and convergence overlay.",
    )
    name: str | None = Field(
        None, max_length=200, description="Name of the sweep (its trials' adapters are named after it)."
    )
    dataset_id: int = Field(..., ge=1, description="Registered dataset every trial trains on.")
    base_model: str = Field(..., min_length=1, description="Bundled model name, Hugging Face id or local directory.")
    task: Literal["causal-lm", "classification"] = Field("causal-lm", description="What the model learns to do.")
    variant: str = Field("lora", description="Name of a registered LoRA variant.")
    space: dict[str, SearchParam] = Field(..., min_length=1, description="Settings searched, with their ranges.")
    variant_params: dict[str, Any] = Field(default_factory=dict, description="Fixed variant parameters.")
    variant_preset: str | None = Field(
        None,
        max_length=100,
        description="A named preset (e.g. small-model) applied to every trial's variant that declares it; the "
        "others keep their defaults. Fixed variant parameters override it.",
    )
    hyper: TrainingHyperParams = Field(default_factory=TrainingHyperParams, description="Fixed training settings.")
    first_trials: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=64,
        description="Points tried first, before the sampler's own (e.g. the defaults): each maps searched "
        "settings to values; a point listed twice is tried twice (it shows the noise).",
    )
    n_trials: int = Field(20, ge=1, le=10_000, description="Trials in all (the budget).")
    max_hours: float | None = Field(
        None, gt=0, le=24 * 365, description="No new trial starts after this many hours; running ones finish."
    )
    parallel: int = Field(1, ge=1, le=64, description="Trials running at once (on as many workers).")
    objective: Literal["eval_loss", "eval_accuracy"] = Field(
        "eval_loss", description="What the sweep optimises: validation loss (minimised) or accuracy (maximised)."
    )
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median",
        description="Stop unpromising trials early from their validation curves: median (a trial whose best "
        "validation value so far is worse than the median of the finished trials' values at the same step, or at "
        "their last step if they were shorter) or Hyperband (Optuna's, over max_steps).",
    )
    pruner_startup_trials: int = Field(
        2,
        ge=0,
        le=1000,
        description="Median pruner: finished trials needed before it prunes anything (at least 1 is always "
        "needed). Default 2: one finished trial alone is a noisy yardstick.",
    )
    pruner_warmup_steps: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="Median pruner: never prune a trial before this training step. Default 0: a trial may be "
        "stopped at its first validation point; raise it when early validation is noisy (LR warm-up).",
    )
    trials_on: Literal["workers", "here"] = Field(
        "workers",
        description="workers: trials are queued for any worker (the sweep itself holds one); here: trials run "
        "in the sweep's own process (`studio sweep --inline`).",
    )
    poll_seconds: float = Field(2.0, gt=0, le=600, description="How often running trials are checked.")
    seed: int = Field(42, ge=0, description="Seed of the TPE sampler and of every trial's training.")

    @model_validator(mode="before")
    @classmethod
    def _compare_defaults(cls, data: Any) -> Any:
        """Compare mode: one trial per listed variant, each tried first, no pruning, unless given otherwise."""
        if not isinstance(data, dict) or data.get("mode") != "compare":
            return data
        choices = (data.get("space") or {}).get(SWEEP_VARIANT_KEY)
        names = getattr(choices, "choices", None)
        if names is None and isinstance(choices, dict):
            names = choices.get("choices")
        if not isinstance(names, list) or not names:
            return data  # the after-validator names what is missing
        data = dict(data)
        data.setdefault("variant", names[0])
        data.setdefault("n_trials", len(names))
        data.setdefault("pruner", "none")
        data.setdefault("first_trials", [{SWEEP_VARIANT_KEY: name} for name in names])
        return data

    @model_validator(mode="after")
    def _check_compare(self) -> SweepRequest:
        if self.mode != "compare":
            return self
        choices = self.space.get(SWEEP_VARIANT_KEY)
        if not isinstance(choices, Choices) or set(self.space) != {SWEEP_VARIANT_KEY}:
            raise ValueError("space: a comparison searches only `variant`, with the variants as its choices")
        names = list(choices.choices)
        if len(names) < 2:
            raise ValueError("space: a comparison needs at least two variants")
        if self.pruner != "none":
            raise ValueError("pruner: a comparison runs every variant to the same budget, so it prunes nothing")
        if self.n_trials != len(names):
            raise ValueError(f"n_trials: a comparison of {len(names)} variants runs {len(names)} trials")
        if sorted(map(repr, (p.get(SWEEP_VARIANT_KEY) for p in self.first_trials))) != sorted(map(repr, names)):
            raise ValueError("first_trials: a comparison tries each variant once (leave first_trials empty)")
        return self

    @model_validator(mode="after")
    def _check_objective(self) -> SweepRequest:
        if self.hyper.validation_fraction <= 0:
            raise ValueError(
                "hyper.validation_fraction: a sweep compares trials on validation, so hold out some rows (e.g. 0.1)"
            )
        if self.objective == "eval_accuracy" and self.task != "classification":
            raise ValueError("objective: eval_accuracy is for classification; use eval_loss")
        return self


# Federated LoRA (issue #14) ---------------------------------------------------------------------------

FEDERATED_STRATEGIES = ("fedit", "ffa", "flora", "lora_fair")


class FederatedPrivacy(StudioModel):
    """DP-SGD on every client: give the noise σ, or a target ε (σ is then chosen to fit), or both (ε is a budget).

    Each client's steps are Poisson-sampled at rate q (``sample_rate``, else the request's batch size over
    the client's rows); ε is accounted per client over all its rounds with Opacus' RDP accountant.
    """

    noise_multiplier: float | None = Field(
        None, ge=0, le=1000, description="Noise σ: Gaussian noise of std σ·C is added to each step's summed gradient."
    )
    target_epsilon: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="Privacy budget ε per client over the whole run. Alone: the smallest σ that fits is used; "
        "with a noise σ: a run that would spend more is refused before it starts.",
    )
    max_grad_norm: float = Field(1.0, gt=0, le=1000, description="Clipping norm C of each row's gradient.")
    delta: float = Field(1e-5, gt=0, lt=0.1, description="δ of the (ε, δ) guarantee (well below 1 / rows).")
    sample_rate: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Share q of a client's rows in each step (Poisson sampling). Empty: batch size / rows.",
    )

    @model_validator(mode="after")
    def _noise_or_budget(self) -> FederatedPrivacy:
        if self.noise_multiplier is None and self.target_epsilon is None:
            raise ValueError("noise_multiplier: give the noise σ or a target ε (or both)")
        if self.noise_multiplier == 0 and self.target_epsilon is not None:
            raise ValueError(
                f"noise_multiplier: σ = 0 gives no privacy (ε = ∞), so no budget ε = {self.target_epsilon:g} can hold"
            )
        return self


class FederatedRequest(StudioModel):
    """Simulated federated LoRA: one dataset split among K clients that train locally; the server aggregates.

    The fields are those of :class:`studio.federated.simulation.FederatedParams` (``strategy`` is its
    ``method``) plus the dataset, the base model and an optional DP-SGD block.
    """

    kind: Literal["federated"] = "federated"
    name: str | None = Field(None, max_length=200, description="Name of the resulting adapter.")
    dataset_id: int = Field(..., ge=1, description="Registered dataset whose rows are dealt to the clients.")
    base_model: str = Field(..., min_length=1, description="Bundled model name, Hugging Face id or local directory.")
    strategy: Literal[FEDERATED_STRATEGIES] = Field(  # type: ignore[valid-type]
        "fedit",
        description="fedit: average A and B. ffa: FFA-LoRA, A seeded by the server and frozen, only B trained "
        "and sent (half the traffic). flora: FLoRA, the clients' LoRAs stacked (exact; the rank grows every "
        "round). lora_fair: FedIT plus the server's correction of B towards the exact average.",
    )
    clients: int = Field(4, ge=1, le=100, description="Number of simulated clients K.")
    split: Literal["iid", "dirichlet", "label_shares", "column"] = Field(
        "iid",
        description="iid: rows dealt at random. dirichlet: each label's rows split by Dir(α) shares (non-IID). "
        "label_shares: each client's label mix fixed (default FFA-LoRA's 3 clients [0.1,0.9], [0.9,0.1], "
        "[0.5,0.5]). column: a column names each row's client.",
    )
    alpha: float = Field(0.5, gt=0, le=1000, description="Dirichlet α: small (0.1) = each client sees few labels.")
    label_shares: list[list[float]] = Field(
        default_factory=lambda: [[0.1, 0.9], [0.9, 0.1], [0.5, 0.5]],
        description="label_shares split: one row per client, one share per label (labels in sorted order).",
    )
    label_column: str = Field("label", min_length=1, description="Column used as the label (Dirichlet split, chart).")
    client_column: str = Field("client", min_length=1, description="Column naming each row's client (column split).")
    rounds: int = Field(3, ge=1, le=1000, description="Federated rounds R.")
    local_steps: int = Field(5, ge=1, le=100_000, description="Optimizer steps each sampled client runs per round.")
    fraction: float = Field(1.0, gt=0, le=1, description="Share of the clients sampled each round.")
    r: int = Field(4, ge=1, le=256, description="LoRA rank of every client.")
    lora_alpha: float = Field(8.0, gt=0, le=4096, description="LoRA scale numerator (scale = lora_alpha / r).")
    target_modules: list[str] | None = Field(None, description="Linear layer names to adapt; empty: the defaults.")
    learning_rate: float = Field(1e-2, gt=0, le=1, description="Clients' learning rate.")
    batch_size: int = Field(4, ge=1, le=512, description="Rows per local step (DP: the expected rows per step).")
    max_length: int = Field(128, ge=16, le=32_768, description="Longer rows are truncated to this many tokens.")
    validation_fraction: float = Field(
        0.2, gt=0, lt=1, description="Rows held out (before the split) for the global validation loss."
    )
    fair_solver: Literal["iterative", "ridge"] = Field(
        "iterative", description="lora_fair: cosine objective by SGD (the paper) or the closed-form ridge."
    )
    fair_lambda: float = Field(0.01, ge=0, le=100, description="lora_fair: weight λ of ‖ΔB‖² in the correction.")
    a_seed: int = Field(0, ge=0, description="ffa: seed of the frozen A shared by the server and the clients.")
    privacy: FederatedPrivacy | None = Field(None, description="DP-SGD on every client; empty: no DP.")
    seed: int = Field(0, ge=0, description="Seed of the split, the sampling of clients and the initial adapter.")

    @model_validator(mode="after")
    def _check_federated(self) -> FederatedRequest:
        if self.split == "dirichlet" and self.clients < 2:
            raise ValueError("clients: a Dirichlet split needs at least 2 clients")
        if self.split == "label_shares" and len(self.label_shares) != self.clients:
            raise ValueError(
                f"label_shares: {len(self.label_shares)} rows of shares for {self.clients} clients (one row per client)"
            )
        return self

    def simulation_params(self) -> dict[str, Any]:
        """The keyword arguments of :class:`studio.federated.simulation.FederatedParams` for this request."""
        skip = {"kind", "name", "dataset_id", "base_model", "strategy"}
        values = {k: getattr(self, k) for k in type(self).model_fields if k not in skip}
        return {**values, "method": self.strategy}


AnyRequest = (
    CheckRequest
    | TrainRequest
    | EvalRequest
    | MergeRequest
    | PersonaliseRequest
    | PretrainRequest
    | MixtureRequest
    | GeneratorRequest
    | GenerateRequest
    | TransferRequest
    | SweepRequest
    | FederatedRequest
)
JobRequest = Annotated[AnyRequest, Field(discriminator="kind")]
_REQUEST_ADAPTER: TypeAdapter[Any] = TypeAdapter(JobRequest)
JOB_KINDS = (
    "check",
    "train",
    "eval",
    "merge",
    "personalise",
    "pretrain",
    "mixture",
    "generator",
    "generate",
    "transfer",
    "sweep",
    "federated",
)


def parse_request(data: dict[str, Any]) -> AnyRequest:
    """Validate a stored or submitted request dict; errors name the field and what to do."""
    try:
        return _REQUEST_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise ValidationFailed(format_validation_error(exc)) from None


def format_validation_error(exc: ValidationError) -> str:
    """Every problem in plain words, 'Field: what to do', joined by '; ' (see studio.plain_errors)."""
    from studio.plain_errors import describe_validation_error

    return describe_validation_error(exc, skip_names=JOB_KINDS)


# List queries: what the Adapters and Jobs lists show (UI, CLI and registry share them) ------------------

ADAPTER_SORTS = ("newest", "oldest", "name", "params", "size", "metric_asc", "metric_desc")
JOB_SORTS = ("newest", "oldest")


class AdapterFilters(StudioModel):
    """Which adapters a list shows; unset fields do not filter."""

    variant: str | None = Field(None, description="Only adapters of this variant.")
    base_model: str | None = Field(None, description="Only adapters of this base model.")
    dataset_id: int | None = Field(None, ge=1, description="Only adapters trained on this dataset.")
    metric: str | None = Field(None, description="Only adapters with this numeric metric (what metric sorts use).")


class JobFilters(StudioModel):
    """Which jobs a list shows; unset fields do not filter."""

    status: list[str] | None = Field(None, description="Only jobs in one of these statuses.")
    kind: str | None = Field(None, description="Only jobs of this kind.")


# The playground's blind Arena ------------------------------------------------------------------------

# Votes keep the prompt for browsing later, not for replaying it: long pastes are cut to this many characters.
ARENA_PROMPT_CHARS = 2000
ARENA_TARGET = r"^(base|adapter:[1-9][0-9]*)$"


class ArenaVote(StudioModel):
    """One vote of the blind Arena: which of two hidden replies (A or B) to one prompt was better, or a tie.

    Targets are the playground's strings, ``"base"`` or ``"adapter:<id>"``; ``battle_id`` is the
    battle's opaque id (one vote per battle).
    """

    battle_id: str = Field(..., min_length=8, max_length=64, description="The battle voted on.")
    base_model: str = Field(..., min_length=1, max_length=200, description="The base model both replies ran on.")
    target_a: str = Field(..., pattern=ARENA_TARGET, description="What answered as Model A.")
    target_b: str = Field(..., pattern=ARENA_TARGET, description="What answered as Model B.")
    prompt: str = Field("", description="The prompt both answered (cut to ARENA_PROMPT_CHARS).")
    winner: Literal["a", "b", "tie"] = Field(..., description="The better reply, or a tie.")
    voter: str | None = Field(None, max_length=200, description="Who voted, when the studio knows.")

    @model_validator(mode="after")
    def _distinct_and_short(self) -> ArenaVote:
        if self.target_a == self.target_b:
            raise ValueError("the two contestants of a battle must differ")
        if len(self.prompt) > ARENA_PROMPT_CHARS:
            self.prompt = self.prompt[: ARENA_PROMPT_CHARS - 1] + "…"
        return self
