"""Differential privacy for LoRA training: DP-SGD steps and their (ε, δ) accounting.

- :mod:`studio.privacy.sampling`: Poisson sampling of the rows of one step (rate q = L / n).
- :mod:`studio.privacy.per_sample`: per-sample gradients of the trainable LoRA tensors with
  ``torch.func.vmap(grad(functional_call))``, and per-sample clipping to a global norm C.
- :mod:`studio.privacy.dp_sgd`: one DP-SGD step (clip, sum, add N(0, σ²C²I), divide by L, then any
  optimizer) and :func:`~studio.privacy.dp_sgd.make_dp_trainer` for the federated client and plain training.
- :mod:`studio.privacy.accounting`: Opacus' RDP accountant over the steps actually run,
  :func:`~studio.privacy.accounting.noise_for_budget` and the refusal of an over-budget plan
  (:func:`~studio.privacy.accounting.check_budget`).

Spec: composition.md §4. Opacus is used for accounting only; its module hooks are not (they
silently stop training when the model is moved after wrapping).
"""
