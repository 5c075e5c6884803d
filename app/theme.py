"""The studio's one theme, stylesheet and logo; gradio 6 takes them in ``launch()``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
CSS_PATH = STATIC_DIR / "style.css"
LOGO_PATH = STATIC_DIR / "logo.svg"


def theme() -> gr.themes.Base:
    """A calm indigo theme with readable system fonts (no web fonts: the studio runs offline)."""
    return gr.themes.Soft(
        primary_hue="indigo",
        secondary_hue="sky",
        neutral_hue="slate",
        font=[gr.themes.Font("Inter"), "ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "monospace"],
    ).set(block_radius="10px", button_large_radius="8px")


def launch_options() -> dict[str, Any]:
    """Keyword arguments for ``Blocks.launch`` that carry the look and feel."""
    return {"theme": theme(), "css_paths": [CSS_PATH], "favicon_path": str(LOGO_PATH)}


def header_html(logout: bool = False) -> str:
    """The page header: inline logo (no static route needed), name, a one-line promise and, with a login, Log out."""
    svg = LOGO_PATH.read_text(encoding="utf-8") if LOGO_PATH.is_file() else ""
    # A plain link: /logout (app/login.py) ends the session and redirects to the sign-in page.
    button = "<a class='studio-logout' id='studio-logout' href='logout'>Log out</a>" if logout else ""
    return (
        f"<div class='studio-header'><div class='studio-logo'>{svg}</div><div>"
        "<h1>Adapter Studio</h1>"
        "<p>Fine-tune language models with LoRA and its research variants — no code needed.</p>"
        f"</div>{button}</div>"
    )
