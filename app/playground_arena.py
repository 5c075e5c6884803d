"""The playground's blind Arena: two hidden models answer one prompt side by side; vote, then see who they were.

Who answers as Model A and Model B lives only in a :class:`~studio.services.arena.Battle`
kept in ``gr.State`` (server-side; never sent to the browser). No component shows a
contestant's name before the vote: the chats hold only the replies. The vote buttons open
once both replies are complete and close after one vote.
"""

from __future__ import annotations

import functools
from typing import Any

import gradio as gr

from app.forms import SchemaForm
from app.tab_playground import unanswered
from app.ui import bind, friendly
from studio.charts_arena import arena_figure
from studio.services.arena import ArenaRow, ArenaService, Battle
from studio.serving.generation import GenerationSettings

BOARD_HEADERS = ["Rank", "Model", "Score", "95% interval", "Games", "Wins", "Ties", "Losses"]
VOTES = {"vote_a": "a", "vote_b": "b", "vote_tie": "tie"}
HIDDEN = "Model A and Model B are hidden until you vote."


def _votes_open(open_: bool) -> dict[str, Any]:
    return {name: gr.update(interactive=open_) for name in VOTES}


def board_rows(rows: list[ArenaRow]) -> list[list[Any]]:
    """Leaderboard table rows; contestants without games are listed last, without a score."""
    out = []
    played = [r for r in rows if r.standing.games]
    for rank, row in enumerate(played, 1):
        s = row.standing
        out.append([rank, row.label, round(s.score), f"{s.low:.0f} – {s.high:.0f}", s.games, s.wins, s.ties, s.losses])
    return out


def board(arena: ArenaService, base_model: str | None) -> dict[str, Any]:
    """The leaderboard table and chart of ``base_model``."""
    rows = arena.leaderboard(base_model) if base_model else []
    chart_rows = [
        {"label": r.label, "score": r.standing.score, "low": r.standing.low, "high": r.standing.high,
         "games": r.standing.games}
        for r in rows
    ]  # fmt: skip
    return {"board": board_rows(rows), "board_chart": arena_figure(chart_rows, f"Arena: {base_model or '—'}")}


def battle(arena: ArenaService, gen: SchemaForm | None, base_model: str | None, prompt: str, **raw: Any):
    """Start a blind battle on ``base_model`` and stream both hidden replies to ``prompt`` together."""
    prompt = (prompt or "").strip()
    if not prompt:
        raise gr.Error("Type a prompt first.")
    settings = GenerationSettings(**(gen.values([raw[f"gen.{n}"] for n in gen.names]) if gen else {}))
    current = arena.start_battle(base_model or "")
    history = [{"role": "user", "content": prompt}]
    chats = {"chat_a": [*history, {"role": "assistant", "content": "…"}], "chat_b": []}
    chats["chat_b"] = list(chats["chat_a"])
    yield {"battle": current, "prompt": "", "reveal": HIDDEN, **chats, **_votes_open(False)}
    texts: dict[int, str] = {}
    finished: set[int] = set()
    try:
        for reply in arena.stream_battle(current, prompt, settings):
            texts[reply.pane] = reply.text
            if reply.done:
                finished.add(reply.pane)
            content = reply.text or ("(empty reply)" if reply.done else "…")
            yield {("chat_a", "chat_b")[reply.pane]: [*history, {"role": "assistant", "content": content}]}
    except Exception as exc:
        # As in the Playground: a failure (a full serving queue) left both replies on "…". Voting stays
        # closed; friendly() writes the reason under the battle.
        failed = unanswered({0: history, 1: history}, texts, finished, exc)
        yield {("chat_a", "chat_b")[int(key.removeprefix("chat_"))]: chat for key, chat in failed.items()}
        raise
    yield {"battle": current, **_votes_open(current.finished), "reveal": HIDDEN + " Which reply is better?"}


def voter_name(request: gr.Request | None) -> str | None:
    """The signed-in user's name (STUDIO_AUTH), or None without sign-in."""
    return getattr(request, "username", None) or None


def vote(arena: ArenaService, current: Battle | None, winner: str, voter: str | None = None) -> dict[str, Any]:
    """Record the vote on the current battle, reveal both names, close voting and refresh the board."""
    if current is None:
        raise gr.Error("Start a battle first.")
    arena.vote(current, winner, voter)
    name_a, name_b = arena.reveal(current)
    verdict = {"a": "You preferred **Model A**.", "b": "You preferred **Model B**.", "tie": "You called it a **tie**."}
    reveal = f"{verdict[winner]} Model A was **{name_a}**; Model B was **{name_b}**."
    return {"battle": current, "reveal": reveal, **_votes_open(False), **board(arena, current.base_model)}


def build(arena: ArenaService, tab: gr.Tab, gen: SchemaForm, bases: list[str], default: str | None) -> dict[str, Any]:
    """Lay out the Arena (inside the caller's accordion) and wire it; generation settings are the playground's."""
    c: dict[str, Any] = {"battle": gr.State(None)}
    with gr.Row():
        c["base_model"] = gr.Dropdown(
            label="Base model",
            choices=bases,
            value=default,
            allow_custom_value=True,
            elem_id="arena-base",
            info="Two of its contestants (the bare base or its adapters) are drawn at random.",
        )
    with gr.Row(equal_height=True):
        c["chat_a"] = gr.Chatbot(height=320, label="Model A", elem_id="arena-chat-a")
        c["chat_b"] = gr.Chatbot(height=320, label="Model B", elem_id="arena-chat-b")
    with gr.Row():
        c["prompt"] = gr.Textbox(label="Prompt", placeholder="Ask both hidden models", scale=6, elem_id="arena-prompt")
        c["go"] = gr.Button("New battle", variant="primary", elem_id="arena-go", scale=1)
    with gr.Row():
        c["vote_a"] = gr.Button("A is better", interactive=False, elem_id="arena-vote-a")
        c["vote_tie"] = gr.Button("Tie", interactive=False, elem_id="arena-vote-tie")
        c["vote_b"] = gr.Button("B is better", interactive=False, elem_id="arena-vote-b")
    c["reveal"] = gr.Markdown(HIDDEN, elem_id="arena-reveal")
    with gr.Row():
        c["board"] = gr.Dataframe(headers=BOARD_HEADERS, interactive=False, elem_id="arena-board", max_height=300)
        c["board_chart"] = gr.Plot(label="Leaderboard", elem_id="arena-chart")

    votes = {name: c[name] for name in VOTES}
    battle_out = {k: c[k] for k in ("battle", "prompt", "reveal", "chat_a", "chat_b")} | votes

    def run_battle(**raw: Any):
        yield from battle(arena, gen, **raw)

    battle_in = {"base_model": c["base_model"], "prompt": c["prompt"]} | {f"gen.{n}": w for n, w in gen.widgets.items()}
    for event in (c["go"].click, c["prompt"].submit):
        # A refusal ("Type a prompt first.") goes under the chats, not as Error badges over them.
        bind(event, run_battle, battle_in, battle_out, errors_to="reveal")
    vote_out = {k: c[k] for k in ("battle", "reveal", "board", "board_chart")} | votes
    for name, winner in VOTES.items():
        # Not through bind(): Gradio passes the signed-in user only to a handler whose signature asks for it.
        safe = friendly(functools.partial(vote, arena, winner=winner))

        def cast(current: Battle | None, request: gr.Request, safe: Any = safe) -> list[Any]:
            out = safe(current=current, voter=voter_name(request))
            return [out.get(k, gr.update()) for k in vote_out]

        c[name].click(cast, inputs=[c["battle"]], outputs=list(vote_out.values()))

    def show_board(base_model: str | None) -> dict[str, Any]:
        return board(arena, base_model)

    def refresh_board(base_model: str | None) -> dict[str, Any]:
        bases = arena.playground.base_models()
        base_model = base_model or (bases[0] if bases else None)
        return {"base_model": gr.update(choices=bases, value=base_model), **board(arena, base_model)}

    board_out = {"board": c["board"], "board_chart": c["board_chart"]}
    bind(c["base_model"].input, show_board, {"base_model": c["base_model"]}, board_out)
    bind(tab.select, refresh_board, {"base_model": c["base_model"]}, board_out | {"base_model": c["base_model"]})
    return c
