"""Composition of several trained adapters into one model that keeps them apart (issue #13).

Unlike :mod:`studio.merging`, which folds adapters into a single LoRA, the methods here keep
every adapter as it is and combine them at run time, per token or per user:

- :mod:`studio.composition.meteora`: MeteoRA, N LoRA adapters of one base as frozen experts in
  every targeted linear layer, with a per-layer router that picks the top-k experts per token
  (composition spec §2); :mod:`~studio.composition.meteora_training` trains the routers,
  :mod:`~studio.composition.meteora_bundle` saves and reloads a mixture and
  :mod:`~studio.composition.meteora_charts` draws which expert each token chose.
- :mod:`studio.composition.reclora`: RecLoRA, K shared meta-LoRAs per module mixed by a per-user
  gate (spec §7); :mod:`~studio.composition.reclora_export` writes any user's mixture as a
  standard PEFT LoRA and :mod:`~studio.composition.reclora_train` trains it.
"""
