"""Adapter Studio core: settings, schemas, variants, training and the services the UI calls."""

__version__ = "0.1.0"
