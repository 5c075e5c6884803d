"""The registry: datasets, jobs, metrics, adapters, rank snapshots and workers.

`models_db.registry.Registry` is the only place that queries or commits.
"""
