"""Composing adapters: several LoRAs combined per user or per token (issue #13)."""
