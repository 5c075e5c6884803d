"""Celery: the app factory, the (thin) tasks and the worker's lifecycle."""
