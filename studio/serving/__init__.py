"""Serving for the playground: one base model in memory, several PEFT adapters on it, streamed replies."""
