"""A prompt template: the user's own words with one slot ``{}`` that the search fills, e.g. ``"a tiger, {}"``.

The search learns only the slot's tokens; the scorer reads every candidate inside the template (the fixed
tokens stand beside the learned ones in the text tower, in the loop, in polishing and in the final choice),
so the learned words know what they will stand next to. Polishing sees only the slot, so it never removes or
swaps a fixed token. A result's ``prompt`` is the whole prompt; ``learned_prompt`` the slot's words alone.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

from ..common.errors import PezError
from .prior import TextPrior

Callback = Callable[..., "bool | None"]

SLOT = "{}"


@dataclass(frozen=True)
class Template:
    before: str = ""
    after: str = ""

    @classmethod
    def parse(cls, text: str) -> "Template":
        """``text`` split at its one slot; a template without a slot, or with two, is refused."""
        if not isinstance(text, str):
            raise PezError(f"template must be text with one {SLOT} where the learned words go, got {text!r}")
        parts = text.split(SLOT)
        if len(parts) != 2:
            where = "has no" if len(parts) == 1 else f"has {len(parts) - 1}"
            raise PezError(f"template {text!r} {where} {SLOT} slots; give exactly one {SLOT} where the learned words "
                           f"go, e.g. 'a tiger, {SLOT}' (just {SLOT}: a prompt of learned words alone)")
        return cls(parts[0], parts[1])

    @property
    def empty(self) -> bool:
        return not (self.before or self.after)

    def fill(self, learned: str) -> str:
        return f"{self.before}{learned}{self.after}".strip()

    def framed_result(self, result, tokenize: Callable[[str], list[int]]):
        """The engine's result (the slot's words) as the whole prompt, with the slot's words kept beside it."""
        if self.empty:
            return result
        whole = self.fill(result.prompt)
        unpolished = None if result.unpolished_prompt is None else self.fill(result.unpolished_prompt)
        return dataclasses.replace(result, prompt=whole, token_ids=tokenize(whole), learned_prompt=result.prompt,
                                   unpolished_prompt=unpolished)

    def framed_callback(self, callback: Callback | None) -> Callback | None:
        """``callback`` shown whole prompts as the search goes."""
        if callback is None or self.empty:
            return callback
        return lambda p: callback(dataclasses.replace(p, prompts=[self.fill(t) for t in p.prompts]))

    def framed_prior(self, prior: TextPrior | None) -> TextPrior | None:
        return prior if prior is None or self.empty else FramedPrior(prior, self)


class FramedPrior:
    """A prior that reads the slot's words inside the template: how the whole prompt reads, and which words
    come next after the template's opening words and the slot's words so far."""

    def __init__(self, prior: TextPrior, template: Template):
        self.prior, self.template, self.name = prior, template, prior.name

    def log_probs(self, texts: Sequence[str]) -> list[float]:
        return self.prior.log_probs([self.template.fill(t) for t in texts])

    def next_words(self, prefixes: Sequence[str], count: int) -> list[list[str]]:
        return self.prior.next_words([f"{self.template.before}{p}".rstrip() for p in prefixes], count)

    def scoped(self) -> "FramedPrior":
        return FramedPrior(self.prior.scoped(), self.template)


def join_prompts(parts: Sequence[str], separator: str) -> str:
    """Prompts joined after the fact (the Concat Prompts node; the alternative to a template): the non-empty
    parts, stripped, joined with ``separator``; a separator already at a part's end or start (e.g. 'a tiger, ')
    is not doubled."""
    core = separator.strip()
    kept = []
    for part in parts:
        part = (part or "").strip()
        while core and part.endswith(core):
            part = part[: -len(core)].rstrip()
        while core and part.startswith(core):
            part = part[len(core):].lstrip()
        if part:
            kept.append(part)
    return separator.join(kept)
