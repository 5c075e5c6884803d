"""Base model resolution and loading."""
