"""Composition of several trained adapters into one model that keeps them apart (issue #13).

Unlike :mod:`studio.merging`, which folds adapters into a single LoRA, the methods here keep
every adapter as it is and learn how to combine them at run time:

- :mod:`studio.composition.meteora`: MeteoRA, N LoRA adapters of one base as frozen experts in
  every targeted linear layer, with a per-layer router that picks the top-k experts per token
  (composition spec §2); :mod:`~studio.composition.meteora_training` trains the routers,
  :mod:`~studio.composition.meteora_bundle` saves and reloads a mixture and
  :mod:`~studio.composition.meteora_charts` draws which expert each token chose.
"""
