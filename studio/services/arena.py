"""ArenaService: the playground's blind Arena — two hidden contestants answer one prompt, the user votes.

A *battle* pairs two distinct targets of one base model (the bare base is a contestant too),
picked at random. Both replies stream through :meth:`PlaygroundService.stream_panes`, so
they are generated together in one batch exactly like two playground panes. Who answered is
kept in the :class:`Battle` object, which the UI holds in server-side state only and reveals
after the vote. Votes go to the registry (one per battle: its unique battle id decides) and
the per-base leaderboard is fitted from them by :mod:`studio.evaluation.arena`.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

from studio.errors import ValidationFailed
from studio.evaluation.arena import RESAMPLES, Standing, leaderboard, pick_pair
from studio.schema import ArenaVote
from studio.services.playground import BASE_TARGET, PaneReply, PlaygroundService
from studio.serving.generation import GenerationSettings


@dataclass
class Battle:
    """One blind battle. Opaque to the browser: the UI keeps it in server-side state only."""

    id: str
    base_model: str
    target_a: str
    target_b: str
    prompt: str = ""
    answered: set[int] = field(default_factory=set)  # panes (0 = A, 1 = B) whose reply is complete
    voted: str | None = None  # the winner once voted

    @property
    def finished(self) -> bool:
        """Both replies are complete: voting is open."""
        return self.answered == {0, 1}


@dataclass(frozen=True)
class ArenaRow:
    """A leaderboard row with the contestant's display name."""

    label: str
    standing: Standing


class ArenaService:
    """Start battles, stream them, record votes, and rank each base model's contestants."""

    def __init__(self, playground: PlaygroundService, rng: random.Random | None = None, contestants: int = 50):
        self.playground = playground
        self.registry = playground.registry
        self.rng = rng or random.SystemRandom()
        self.contestants = contestants  # newest adapters of a base that may be drawn (besides the base)

    def start_battle(self, base_model: str) -> Battle:
        """A new battle between two distinct, randomly drawn targets of ``base_model``."""
        if not base_model:
            raise ValidationFailed("choose a base model first")
        targets = [t.value for t in self.playground.targets(base_model, limit=self.contestants)]
        if len(targets) < 2:
            raise ValidationFailed(
                f"the Arena needs an adapter trained on {base_model} to compare with the base; train one first"
            )
        a, b = pick_pair(targets, self.rng)
        return Battle(id=secrets.token_hex(16), base_model=base_model, target_a=a, target_b=b)

    def stream_battle(
        self, battle: Battle, prompt: str, settings: GenerationSettings | None = None
    ) -> Iterator[PaneReply]:
        """Both replies to ``prompt`` (pane 0 = A, 1 = B), generated together and streamed as tokens arrive.

        One prompt per battle: the vote judges exactly these two replies.
        """
        prompt = (prompt or "").strip()
        if not prompt:
            raise ValidationFailed("type a prompt first")
        if battle.prompt:
            raise ValidationFailed("this battle already has its prompt; start a new battle")
        battle.prompt = prompt
        messages = [{"role": "user", "content": prompt}]
        panes = [(battle.target_a, messages), (battle.target_b, messages)]
        for reply in self.playground.stream_panes(battle.base_model, panes, settings):
            if reply.done:
                battle.answered.add(reply.pane)
            yield reply

    def vote(self, battle: Battle, winner: str, voter: str | None = None) -> Battle:
        """Record ``winner`` ("a", "b" or "tie") for a finished battle, once; the battle is marked voted."""
        if battle.voted is not None:
            raise ValidationFailed("this battle was already voted on; start a new one")
        if not battle.finished:
            raise ValidationFailed("wait until both replies are complete, then vote")
        vote = ArenaVote(
            battle_id=battle.id,
            base_model=battle.base_model,
            target_a=battle.target_a,
            target_b=battle.target_b,
            prompt=battle.prompt,
            winner=winner,
            voter=voter or None,
        )
        if self.registry.record_vote(vote) is None:  # the same battle voted from another tab or process
            battle.voted = winner
            raise ValidationFailed("this battle was already voted on; start a new one")
        battle.voted = winner
        return battle

    def labels(self, base_model: str, targets: list[str]) -> dict[str, str]:
        """Display names of targets; an adapter deleted since its votes reads "#<id> (deleted)"."""
        ids = [int(t.partition(":")[2]) for t in targets if t.startswith("adapter:")]
        names = self.registry.adapter_names(ids)
        out = {}
        for target in targets:
            if target == BASE_TARGET:
                out[target] = f"{base_model} (no adapter)"
            else:
                adapter_id = int(target.partition(":")[2])
                out[target] = (
                    f"#{adapter_id} {names[adapter_id]}" if adapter_id in names else f"#{adapter_id} (deleted)"
                )
        return out

    def reveal(self, battle: Battle) -> tuple[str, str]:
        """The names of Model A and Model B; only after the vote."""
        if battle.voted is None:
            raise ValidationFailed("vote first; the names are revealed after the vote")
        labels = self.labels(battle.base_model, [battle.target_a, battle.target_b])
        return labels[battle.target_a], labels[battle.target_b]

    def leaderboard(self, base_model: str, resamples: int = RESAMPLES, seed: int = 0) -> list[ArenaRow]:
        """Bradley–Terry standings of ``base_model``'s contestants (base at 1000), best first."""
        votes = [(v.target_a, v.target_b, v.winner) for v in self.registry.votes_for_base(base_model)]
        standings = leaderboard(votes, anchor=BASE_TARGET, resamples=resamples, seed=seed)
        labels = self.labels(base_model, [s.contestant for s in standings])
        return [ArenaRow(labels[s.contestant], s) for s in standings]
