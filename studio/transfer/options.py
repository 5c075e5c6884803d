"""Settings of the transfer kit and of a transfer (shared by the plain functions and, later, the job schema)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from studio.schema import TrainingHyperParams


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

    samples: int = Field(64, ge=1, le=100_000, description="Synthetic inputs to keep (the paper keeps |D|).")
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
    r: int | None = Field(None, ge=1, le=1024, description="Rank of the student LoRA; empty = the source's.")
    lora_alpha: float | None = Field(None, gt=0, description="Alpha of the student LoRA; empty = the source's.")
    target_modules: list[str] | None = Field(
        None, description="Target layers on the new base; empty = every linear layer of its blocks."
    )
    hyper: TrainingHyperParams = Field(default_factory=_student_hyper)
    seed: int = Field(0, ge=0)
