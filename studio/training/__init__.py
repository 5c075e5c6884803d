"""Training: tokenise a dataset, train one variant with hooks, checkpoint and resume, save the adapter.

Entry points: :func:`studio.training.loop.run_training` (a plain function taking a
reporter) and :func:`studio.training.job.run_train_job` (the "train" job kind).
Nothing heavy is imported here.
"""
