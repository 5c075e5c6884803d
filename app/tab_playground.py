"""Playground tab: 2-4 chat panes side by side (the base model and its adapters), one prompt to all, streamed."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.forms import SchemaForm
from app.ui import bind, user_message
from studio.services.arena import ArenaService
from studio.services.container import Services
from studio.services.playground import BASE_TARGET, PlaygroundService
from studio.serving.generation import GenerationSettings

TITLE = "Playground"
ELEM_ID = "tab-playground"
MAX_PANES = 4
# What a pane shows in place of a reply that failed: none at all, or cut short after some text.
NO_ANSWER = "⚠ no answer: "
CUT_SHORT = "\n\n⚠ cut short: "


def plain_messages(history: list[dict[str, Any]] | None) -> list[dict[str, str]]:
    """Chatbot values (content may be a list of parts) as ``{"role", "content": str}`` dicts."""
    out = []
    for message in history or []:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        elif isinstance(content, dict):
            content = content.get("text", "")
        out.append({"role": message["role"], "content": str(content or "")})
    return out


def without_failures(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """A pane's conversation as the model should read it: the notes of failed replies left out.

    A turn that got no answer is dropped with its question (the model never saw it); a reply
    cut short keeps its text without the note. Else the model would be sent the studio's words
    as if it had written them.
    """
    out: list[dict[str, str]] = []
    for message in messages:
        content = message["content"]
        if message["role"] == "assistant" and content.startswith(NO_ANSWER):
            if out and out[-1]["role"] == "user":
                out.pop()
            continue
        if message["role"] == "assistant" and CUT_SHORT in content:
            content = content[: content.rindex(CUT_SHORT)]
        out.append({**message, "content": content})
    return out


def unanswered(
    histories: dict[int, list[dict[str, str]]], texts: dict[int, str], finished: set[int], exc: Exception
) -> dict[str, Any]:
    """The chats of the panes that ``exc`` stopped: each placeholder replaced by what happened.

    A pane with no text yet says it got no answer and why; one with some text keeps it, marked
    as cut short. Panes that finished before the failure are left as they are. The full
    message goes to the status line under the chats (written by :func:`app.ui.friendly`).
    """
    reason = user_message(exc) or "something went wrong (see below)"
    out = {}
    for i, history in histories.items():
        if i in finished:
            continue
        text = texts.get(i, "")
        content = f"{text}{CUT_SHORT}{reason}" if text else f"{NO_ANSWER}{reason}"
        out[f"chat_{i}"] = [*history, {"role": "assistant", "content": content}]
    return out


def target_choices(playground: PlaygroundService, base_model: str | None) -> list[tuple[str, str]]:
    """``(label, target)`` pairs for the panes' dropdowns."""
    if not base_model:
        return []
    return [(t.label, t.value) for t in playground.targets(base_model)]


def default_targets(choices: list[tuple[str, str]]) -> list[str]:
    """Pane 1 the base, the next panes the newest adapters (then the base again)."""
    values = [value for _, value in choices]
    adapters = [v for v in values if v != BASE_TARGET]
    return [BASE_TARGET, *adapters, *[BASE_TARGET] * MAX_PANES][:MAX_PANES]


def on_base(playground: PlaygroundService, base_model: str | None) -> dict[str, Any]:
    """New base model: refresh every pane's choices, pick sensible targets, clear the chats."""
    choices = target_choices(playground, base_model)
    picks = default_targets(choices)
    out = {f"target_{i}": gr.update(choices=choices, value=picks[i]) for i in range(MAX_PANES)}
    out.update({f"chat_{i}": [] for i in range(MAX_PANES)})
    return out


def refresh(playground: PlaygroundService, base_model: str | None, **current: str | None) -> dict[str, Any]:
    """Reload base models and pane choices (new adapters appear); keep the panes' picks when still valid."""
    bases = playground.base_models()
    base_model = base_model or (bases[0] if bases else None)
    choices = target_choices(playground, base_model)
    valid = {value for _, value in choices}
    picks = default_targets(choices)
    out: dict[str, Any] = {"base_model": gr.update(choices=bases, value=base_model)}
    for i in range(MAX_PANES):
        value = current.get(f"target_{i}")
        out[f"target_{i}"] = gr.update(choices=choices, value=value if value in valid else picks[i])
    return out


def pane_note(playground: PlaygroundService, base_model: str | None, target: str | None) -> str:
    """The Markdown under a pane's picker: how its adapter is served (e.g. the error of its plain-LoRA
    approximation); empty for the base and for adapters the engine serves as they are."""
    if not base_model or not target or target == BASE_TARGET:
        return ""
    try:
        note = playground.serving_note(base_model, target)
    except Exception as exc:  # a missing adapter directory, a base that fails to load: say so, do not break the tab
        return f"*could not prepare this adapter for serving: {exc}*"
    return f"*{note}*" if note else ""


def user_box(playground: PlaygroundService, target: str | None) -> Any:
    """The pane's "user" textbox: shown only for a personalised (RecLoRA) adapter, whose reply is per user."""
    return gr.update(visible=playground.is_personalised(target))


def on_panes(panes: int) -> dict[str, Any]:
    """Show the first ``panes`` panes."""
    return {f"pane_{i}": gr.update(visible=i < int(panes)) for i in range(MAX_PANES)}


def send(playground: PlaygroundService, gen: SchemaForm | None, base_model: str, panes: int, prompt: str, **raw: Any):
    """Send ``prompt`` to every visible pane at once, streaming all replies side by side as tokens arrive.

    The panes are generated together in one batch on the serving engine (adapters it
    cannot serve are answered by PEFT next to it), so no pane waits for another.
    """
    prompt = (prompt or "").strip()
    if not prompt:
        raise gr.Error("Type a message first.")
    if not base_model:
        raise gr.Error("Choose a base model first.")
    settings = GenerationSettings(**(gen.values([raw[f"gen.{n}"] for n in gen.names]) if gen else {}))
    count = max(1, min(MAX_PANES, int(panes)))
    histories = {i: plain_messages(raw.get(f"chat_{i}")) for i in range(count)}
    for i in range(count):
        histories[i] = [*histories[i], {"role": "user", "content": prompt}]
    placeholders = {f"chat_{i}": [*h, {"role": "assistant", "content": "…"}] for i, h in histories.items()}
    yield {"prompt": "", "status": "", **placeholders}  # clears the previous refusal
    requests = [(raw.get(f"target_{i}") or BASE_TARGET, without_failures(histories[i])) for i in range(count)]
    users = [raw.get(f"user_{i}") for i in range(count)]  # only personalised (RecLoRA) panes read theirs
    texts: dict[int, str] = {}
    finished: set[int] = set()
    try:
        for reply in playground.stream_panes(base_model, requests, settings, users=users):
            texts[reply.pane] = reply.text
            if reply.done:
                finished.add(reply.pane)
            content = reply.text or ("(empty reply)" if reply.done else "…")
            yield {f"chat_{reply.pane}": [*histories[reply.pane], {"role": "assistant", "content": content}]}
    except Exception as exc:
        # A failure stops every pane (a full queue, an adapter that cannot be served): without this the
        # panes kept their "…" as if a reply were still coming. friendly() then writes the status line.
        yield unanswered(histories, texts, finished, exc)
        raise


def build(services: Services, tab: gr.Tab, demo: gr.Blocks) -> None:
    """Lay out the tab and wire its events. One PlaygroundService (model cache) per built app."""
    playground = services.playground  # the process's one engine, shared with the /v1 API
    bases = playground.base_models()
    default_base = bases[0] if bases else None
    c: dict[str, Any] = {}
    with gr.Row():
        c["base_model"] = gr.Dropdown(
            label="Base model",
            choices=bases,
            value=default_base,
            allow_custom_value=True,
            elem_id="play-base",
            scale=4,
            info="Every pane uses this base; adapters listed are the ones trained on it.",
        )
        c["panes"] = gr.Slider(2, MAX_PANES, value=2, step=1, label="Panes", elem_id="play-panes", scale=1)
    with gr.Row(equal_height=True):
        for i in range(MAX_PANES):
            with gr.Column(visible=i < 2, min_width=260, elem_classes=["chat-pane"]) as c[f"pane_{i}"]:
                c[f"target_{i}"] = gr.Dropdown(label=f"Pane {i + 1}", choices=[], elem_id=f"play-target-{i}")
                c[f"note_{i}"] = gr.Markdown("", elem_id=f"play-note-{i}")
                c[f"user_{i}"] = gr.Textbox(
                    label="User",
                    placeholder="a user id of this personalised adapter",
                    info="Empty or unknown: the mean gate over all users.",
                    visible=False,
                    elem_id=f"play-user-{i}",
                )
                c[f"chat_{i}"] = gr.Chatbot(height=380, elem_id=f"play-chat-{i}", buttons=["copy"], show_label=False)
    with gr.Row():
        c["prompt"] = gr.Textbox(
            label="Message", placeholder="Ask something; every pane answers", scale=6, elem_id="play-prompt", lines=2
        )
        with gr.Column(scale=1, min_width=140):
            c["send"] = gr.Button("Send to all", variant="primary", elem_id="play-send")
            c["clear"] = gr.Button("Clear chats", elem_id="play-clear")
    # Refusals (no message, no base model) are written here in words, not as Error badges over the panes.
    c["status"] = gr.Markdown("", elem_id="play-status")
    with gr.Accordion("Generation settings", open=False, elem_id="play-settings"), gr.Row(elem_classes=["form-grid"]):
        gen = SchemaForm(GenerationSettings.model_json_schema(), "gen")
    with gr.Accordion("Arena: blind A/B battles and a leaderboard", open=False, elem_id="play-arena"):
        from app import playground_arena  # imports this module's helpers

        playground_arena.build(ArenaService(playground), tab, gen, bases, default_base)

    targets = {f"target_{i}": c[f"target_{i}"] for i in range(MAX_PANES)}
    chats = {f"chat_{i}": c[f"chat_{i}"] for i in range(MAX_PANES)}
    users = {f"user_{i}": c[f"user_{i}"] for i in range(MAX_PANES)}
    send_in = {"base_model": c["base_model"], "panes": c["panes"], "prompt": c["prompt"]} | targets | chats | users
    send_in |= {f"gen.{n}": w for n, w in gen.widgets.items()}

    def change_base(base_model: str | None) -> dict[str, Any]:
        return on_base(playground, base_model)

    def send_to_panes(**raw: Any):
        yield from send(playground, gen, **raw)

    def clear_chats() -> dict[str, Any]:
        return {f"chat_{i}": [] for i in range(MAX_PANES)}

    def refresh_tab(**raw: Any) -> dict[str, Any]:
        return refresh(playground, **raw)

    bind(c["base_model"].input, change_base, {"base_model": c["base_model"]}, targets | chats)
    bind(c["panes"].change, on_panes, {"panes": c["panes"]}, {f"pane_{i}": c[f"pane_{i}"] for i in range(MAX_PANES)})
    for event in (c["send"].click, c["prompt"].submit):
        bind(event, send_to_panes, send_in, chats | {"prompt": c["prompt"], "status": c["status"]}, errors_to="status")
    bind(c["clear"].click, clear_chats, {}, chats)
    for i in range(MAX_PANES):
        # .change also fires when a new base model or a refresh picks the pane's target.
        def show_note(base_model: str | None, target: str | None, i: int = i) -> dict[str, Any]:
            return {f"note_{i}": pane_note(playground, base_model, target), f"user_{i}": user_box(playground, target)}

        bind(
            c[f"target_{i}"].change,
            show_note,
            {"base_model": c["base_model"], "target": c[f"target_{i}"]},
            {f"note_{i}": c[f"note_{i}"], f"user_{i}": c[f"user_{i}"]},
        )
    bind(tab.select, refresh_tab, {"base_model": c["base_model"]} | targets, {"base_model": c["base_model"]} | targets)
