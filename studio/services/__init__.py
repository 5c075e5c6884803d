"""Services: what the UI, the CLI and the workers call."""
