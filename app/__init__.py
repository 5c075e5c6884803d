"""The Gradio studio: one module per tab, layout and wiring only; handlers call services."""
