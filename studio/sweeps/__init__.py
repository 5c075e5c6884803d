"""Hyper-parameter sweeps: Optuna searches over training and variant settings, trials are train jobs."""
