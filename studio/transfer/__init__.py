"""Trans-LoRA: carry a causal-LM adapter to a new base model without its training data.

Two plain functions (composition spec §5):

- :func:`studio.transfer.kit.build_transfer_kit` — while the data still exists, keep 5 seed
  examples and a small discriminator LoRA (real task inputs vs inputs the base writes from
  the seeds) in ``<adapter>/transfer_kit/``;
- :func:`studio.transfer.pipeline.transfer` — the target base writes new inputs few-shot from
  the seeds, the discriminator keeps the ones it judges real, the source base + adapter answers
  them greedily, and a LoRA is trained on the target with those answers (prompt masked).

Nothing heavy is imported here.
"""
