"""Federated LoRA on Flower (issue #14): aggregation, data splits, the Flower apps and the simulated run.

Nothing heavy is imported here; ``flwr`` is needed only by :mod:`studio.federated.flower_app`
and :mod:`studio.federated.simulation` (``pip install 'adapter-studio[federated]'``).
"""
