"""Polishing: discrete local search on the prompts a PEZ loop returns.

PEZ ends at its best projection; from there single-token changes, scored in large batches, go further:

- *swap*: one backward pass gives the gradient of the gain at the hard prompt's embeddings; the
  first-order gain of token v at position i is <grad_i, e_v - e_i>. The best allowed tokens per position
  make single-swap candidates; the improving ones are also tried together; the best string is kept;
  a few rounds, or until no swap improves. Then each position in turn is *kicked*: its best other token
  (of ``KICK_CANDIDATES`` gradient-ranked ones), even one that costs a little, is put there and the tokens
  after it are swapped again; the better prompt is kept. On a causal text tower a token shapes every later
  position, so the rest of a prompt is tuned to its early tokens, and a token that no single swap
  improves may still be the wrong one; a kick is a cheap way out (benchmarks/README.md, planted prompts).
  Without a time budget, kicks are bounded by work, not time: a kick starts only while polishing has
  scored fewer strings than ``kick_budget``, so the result never depends on how busy the machine is.
- *prune*: drop tokens whose removals cost at most ``PRUNE_BUDGET`` of the similarity in total
  (repeated tokens first when they do not pay), so prompts lose filler and stray words.

Modes (``POLISH_MODES``): off, prune, swap, swap+prune (swaps first, then pruning).

Every candidate is decoded and scored as a string (``Scorer.score_texts``, re-tokenized), like the
engine's final choice, on the whole objective (negatives, several images). With a language prior
(``pez_core.engine.prior``) and a fluency weight, the gain also counts how the string reads, and the
prior's likely next words are tried beside the gradient's tokens. A polished prompt never scores below
the prompt it started from. Only the ``Scorer`` interface is used, so polishing serves every scorer.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .prior import TextPrior
from .scorer import Scorer

log = logging.getLogger(__name__)

POLISH_MODES = ("off", "prune", "swap", "swap+prune")
SWAP_PER_POSITION = 8     # gradient-ranked tokens tried at each position per round
SWAP_WIDE = 4             # a round that finds nothing is retried once with this many times more tokens
SWAP_ROUNDS = 32          # at most; a prompt stops swapping when even a wide round finds nothing
SWAP_COMBINE = 4          # the best improving single swaps (at distinct positions) are also tried together
KICK_CANDIDATES = 64      # gradient-ranked tokens scored at a kicked position; the best one is put there
PRUNE_BUDGET = 0.01       # total share of the similarity that pruning may spend
TEXTS_PER_BATCH = {"cpu": 64, "other": 1024}  # strings per scoring call; a stop is seen between calls
IMPROVEMENT = 1e-6        # a swap must gain more than this (float noise of a re-encoded string)
FIRST_ORDER_SCORES_MAX = 1 << 26  # (positions x vocabulary) scores held at once
PRIOR_PROPOSALS = 8       # words the prior proposes at each position, beside the gradient's tokens: of its
PRIOR_POOL = 32           # this many likeliest next words, those the gradient ranks highest
DRAFT_BEAMS = 8           # a fluent draft: the best partial prompts kept per problem while words are added

# report(prompts, similarities) -> True to stop; may raise (a cancel) and the run ends without a result
Report = Callable[[list[str], list[float]], "bool | None"]


@dataclass
class Polished:
    prompt: str
    token_ids: list[int]
    gain: float
    similarity: float


def polish_prompts(scorer: Scorer, prompts: Sequence[str], mode: str, *,
                   deadline: float | None = None, target_similarity: float | None = None,
                   report: Report | None = None, floor: Sequence[float] | None = None,
                   kick_budget: int | None = None, prior: TextPrior | None = None,
                   fluency: float = 0.0) -> list[Polished]:
    """Polish one prompt per problem of ``scorer`` (``prompts[p]`` for problem p).

    The result never has a lower gain than ``floor`` (default: the gain of the prompt it starts from).
    ``deadline`` is a ``time.perf_counter()`` time; by then polishing returns its best so far, as it
    does when ``report`` returns True. Problems whose similarity reaches ``target_similarity`` are not
    swapped further (pruning still runs: it never goes below where polishing started). A kick starts
    only while fewer than ``kick_budget`` strings have been scored (None: no limit but ``deadline``).
    With ``prior`` and ``fluency`` > 0 the gain is the scorer's plus ``fluency`` x the string's mean
    log-probability per token under the prior, and the prior proposes words too.
    """
    if mode not in POLISH_MODES:
        raise ValueError(f"unknown polish mode {mode!r}; choose one of {', '.join(POLISH_MODES)}")
    fluent = _Fluency(prior, fluency, scorer) if prior is not None and fluency else None
    work = _Polisher(scorer, list(prompts), floor, deadline, target_similarity, report, kick_budget, fluent)
    if fluent and mode != "off":
        work.draft()
    if mode in ("swap", "swap+prune"):
        work.swap()
    if mode in ("prune", "swap+prune"):
        work.prune()
    if work.stopped:
        log.info("polishing stopped early (time budget or stop request); keeping the best prompts so far")
    return work.result()


class _Polisher:
    """The search state, per problem. A stop sets ``stopped``, the one signal: every loop then ends after
    keeping the best of what it scored, and nothing more is scored."""

    def __init__(self, scorer: Scorer, prompts: list[str], floor: Sequence[float] | None, deadline: float | None,
                 target: float | None, report: Report | None, kick_budget: int | None, fluency: "_Fluency | None"):
        self.scorer, self.deadline, self.target, self.report = scorer, deadline, target, report
        self.kick_budget, self.fluency = kick_budget, fluency
        self.scored = 0                   # strings scored so far: the work a kick budget counts
        self.stopped = False              # out of time, or the caller asked to stop
        self.batch = TEXTS_PER_BATCH["cpu" if scorer.device.type == "cpu" else "other"]
        gains, sims = scorer.score_texts(prompts, torch.arange(len(prompts), device=scorer.device))
        gains = self.fluency.gains(prompts, gains.tolist()) if self.fluency else gains.tolist()
        self.best = [Polished(t, scorer.tokenize(t), float(g), float(s))  # where the search is, per problem
                     for t, g, s in zip(prompts, gains, sims.tolist())]
        self.floor = [b.gain for b in self.best] if floor is None else [float(f) for f in floor]
        self.longest = [len(b.token_ids) for b in self.best]  # tokens polishing started from: never exceeded
        self.held: list[Polished] = []    # while a kick is searched: the best before it
        self.kept: dict[int, int] = {}    # while a kick is searched: leading tokens not swapped, per problem

    def result(self) -> list[Polished]:
        """The best prompt per problem: the search's, or the one held while a kick is searched."""
        if not self.held:
            return self.best
        return [b if b.gain > h.gain else h for b, h in zip(self.best, self.held)]

    # --- scoring ---------------------------------------------------------------------------------
    def should_stop(self) -> bool:
        """Out of time, or ``report`` returned True; once stopped, it stays stopped."""
        if not self.stopped and self.deadline is not None and time.perf_counter() >= self.deadline:
            self.stopped = True
        if not self.stopped and self.report is not None:
            best = self.result()
            self.stopped = bool(self.report([b.prompt for b in best], [b.similarity for b in best]))
        return self.stopped

    def score(self, texts: list[str], problems: list[int]) -> tuple[list[float], list[float]]:
        """(gain, similarity) of strings for their problems, in batches; after a stop the rest score -inf, so
        the caller keeps the best of what was scored."""
        gains, sims = [-math.inf] * len(texts), [-math.inf] * len(texts)
        for start in range(0, len(texts), self.batch):
            if self.should_stop():
                break
            rows = slice(start, start + self.batch)
            gain, sim = self.scorer.score_texts(texts[rows], torch.tensor(problems[rows], device=self.scorer.device))
            gain = self.fluency.gains(texts[rows], gain.float().tolist()) if self.fluency else gain.float().tolist()
            gains[rows], sims[rows] = gain, sim.float().tolist()
            self.scored += len(texts[rows])
        return gains, sims

    def keep(self, p: int, text: str, gain: float, similarity: float) -> None:
        self.best[p] = Polished(text, self.scorer.tokenize(text), gain, similarity)

    # --- a fluent draft -----------------------------------------------------------------------------
    def draft(self) -> None:
        """Write a prompt word by word from the prior's likely next words, keeping the ``DRAFT_BEAMS`` partial
        prompts of highest gain (similarity and fluency) per problem; a draft better than the prompt found
        replaces it, so the swaps start from text. The drafts are no longer than the prompts found."""
        beams = {p: [""] for p in range(len(self.best))}
        for _ in range(max(self.longest)):
            where = [(p, prefix) for p, prefixes in beams.items() for prefix in prefixes]
            if not where or self.should_stop():
                return
            texts, owner = [], []
            prefixes = [prefix for _, prefix in where]
            for (p, prefix), words in zip(where, self.fluency.prior.next_words(prefixes, PRIOR_PROPOSALS)):
                for word in words:
                    text = f"{prefix} {word}".strip()
                    if 0 < len(self.scorer.tokenize(text)) <= self.longest[p]:
                        texts.append(text)
                        owner.append(p)
            gains, sims = self.score(texts, owner)
            beams = {p: [] for p in beams}
            for j in sorted(range(len(texts)), key=gains.__getitem__, reverse=True):
                p = owner[j]
                if gains[j] > -math.inf and len(beams[p]) < DRAFT_BEAMS and texts[j] not in beams[p]:
                    beams[p].append(texts[j])
                    if gains[j] > self.best[p].gain + IMPROVEMENT:
                        self.keep(p, texts[j], gains[j], sims[j])

    # --- swap --------------------------------------------------------------------------------------
    def swap(self) -> None:
        """Swaps until none improves; then each position in turn is kicked, and a kick that pays is
        followed by swaps everywhere again."""
        self.swap_from(set(range(len(self.best))))
        kicked_positions = max(len(b.token_ids) for b in self.best) - 1 if KICK_CANDIDATES else 0
        for position in range(kicked_positions):
            if self.kick_budget is not None and self.scored >= self.kick_budget:
                log.info("polishing: kick budget (%d strings) spent after %d of %d positions", self.kick_budget,
                         position, kicked_positions)
                return
            kickable = self.kickable(position)
            if not kickable:  # too short or at the target here, so at every later position too
                return
            problems = self.kick(position, kickable)
            self.swap_from(problems)
            improved = {p for p in problems if self.best[p].gain > self.held[p].gain + IMPROVEMENT}
            self.best, self.held, self.kept = self.result(), [], {}
            if self.stopped:
                return
            log.debug("kick at position %d: %d of %d prompts improved", position, len(improved), len(problems))
            self.swap_from(improved)

    def kickable(self, position: int) -> list[int]:
        """Problems with tokens after ``position`` that have not reached the target."""
        return [p for p, b in enumerate(self.best) if len(b.token_ids) > position + 1
                and not (self.target is not None and b.similarity >= self.target)]

    def kick(self, position: int, problems: list[int]) -> set[int]:
        """Hold the best prompts and put at ``position`` of each of ``problems`` its best other token, even a
        worse one; the search then swaps only the tokens after it. The problems kicked (none after a stop)."""
        if self.should_stop():
            return set()
        tokens = self.candidate_tokens(problems, KICK_CANDIDATES, only=position)
        texts, owner = [], []
        for p in problems:
            for i, v in tokens[p]:
                texts.append(self.scorer.decode(_with(self.best[p].token_ids, {i: v})))
                owner.append(p)
        texts, owner, _ = _readable(self.scorer, texts, owner, [None] * len(texts), self.best, self.longest)
        gains, sims = self.score(texts, owner)
        self.held = list(self.best)
        if self.stopped:  # a partly scored kick is not taken
            return set()
        kicked = set()
        for p in problems:
            rows = [j for j, q in enumerate(owner) if q == p]
            if rows:
                j = max(rows, key=gains.__getitem__)
                self.keep(p, texts[j], gains[j], sims[j])
                kicked.add(p)
        self.kept = {p: position + 1 for p in kicked}
        return kicked

    def swap_from(self, problems: set[int]) -> None:
        """Rounds of swaps for ``problems`` until none improves (a narrow miss is retried wide)."""
        narrow, wide = set(problems), set()
        for round_ in range(SWAP_ROUNDS):
            reached = {p for p in narrow | wide if self.target is not None and self.best[p].similarity >= self.target}
            narrow, wide = narrow - reached, wide - reached
            if not narrow | wide or self.should_stop():
                return
            improved = self.swap_round(sorted(narrow), SWAP_PER_POSITION) if narrow else set()
            improved |= self.swap_round(sorted(wide), SWAP_PER_POSITION * SWAP_WIDE) if wide else set()
            log.debug("swap round %d: %d of %d prompts improved", round_ + 1, len(improved), len(narrow | wide))
            narrow, wide = improved, narrow - improved  # a narrow miss is retried wide; a wide miss ends

    def swap_round(self, problems: list[int], per_position: int) -> set[int]:
        """One round of single swaps (then the improving ones together) for ``problems``; the improved ones."""
        tokens = self.candidate_tokens(problems, per_position)
        texts, owner, moves = [], [], []
        for p in problems:
            for i, v in tokens[p]:
                texts.append(self.scorer.decode(_with(self.best[p].token_ids, {i: v})))
                owner.append(p)
                moves.append((i, v))
        texts, owner, moves = _readable(self.scorer, texts, owner, moves, self.best, self.longest)
        gains, sims = self.score(texts, owner)
        combos = self.combined(problems, owner, moves, gains)
        texts, owner, gains, sims = texts + combos[0], owner + combos[1], gains + combos[2], sims + combos[3]
        improved = set()
        for p in problems:
            rows = [j for j, q in enumerate(owner) if q == p]
            if rows:
                j = max(rows, key=gains.__getitem__)
                if gains[j] > self.best[p].gain + IMPROVEMENT:
                    self.keep(p, texts[j], gains[j], sims[j])
                    improved.add(p)
        return improved

    def combined(self, problems: list[int], owner: list[int], moves: list, gains: list[float]):
        """The best improving single swaps at distinct positions applied together: 2, 3, ... at once."""
        texts, who = [], []
        for p in problems:
            good = sorted((j for j, q in enumerate(owner) if q == p and gains[j] > self.best[p].gain + IMPROVEMENT),
                          key=gains.__getitem__, reverse=True)
            chosen: dict[int, int] = {}
            for j in good:
                i, v = moves[j]
                if i in chosen or len(chosen) >= SWAP_COMBINE:
                    continue
                chosen[i] = v
                if len(chosen) > 1:
                    texts.append(self.scorer.decode(_with(self.best[p].token_ids, chosen)))
                    who.append(p)
        texts, who, _ = _readable(self.scorer, texts, who, [None] * len(texts), self.best, self.longest)
        if self.stopped or not texts:
            return [], [], [], []
        return (texts, who, *self.score(texts, who))

    def candidate_tokens(self, problems: list[int], per_position: int,
                         only: int | None = None) -> dict[int, list[tuple[int, int]]]:
        """(position, token) pairs per problem: the allowed tokens of highest first-order gain at each position
        (from ``self.kept``'s on, or at ``only``). One backward per group of prompts of the same length."""
        scorer, out, grads = self.scorer, {}, {}
        keys = scorer.table[scorer.allowed].float()
        by_length: dict[int, list[int]] = {}
        for p in problems:
            by_length.setdefault(len(self.best[p].token_ids), []).append(p)
        for group in by_length.values():
            ids = torch.tensor([self.best[p].token_ids for p in group], device=scorer.device)
            with torch.inference_mode(False), torch.enable_grad():
                prompt = scorer.table[ids].float().clone().requires_grad_(True)
                gain, _ = scorer.gains(prompt, torch.tensor(group, device=scorer.device))
                grad, = torch.autograd.grad(gain.sum(), prompt)
            for p, g, row_ids in zip(group, grad.detach(), ids):
                grads[p] = g
                out[p] = [(i, v) for i, v in self.best_moves(g, row_ids, keys, per_position)
                          if (i == only if only is not None else i >= self.kept.get(p, 0))]
        if self.fluency:
            for p, moves in self.fluency.proposals(self.best, problems, self.kept, only, grads).items():
                out[p] = list(dict.fromkeys(out[p] + moves))
        return out

    def best_moves(self, grad: torch.Tensor, ids: torch.Tensor, keys: torch.Tensor, per_position: int):
        """<grad_i, e_v> for every allowed v (minus <grad_i, e_i>, the same for all v): the top ones per position."""
        allowed = self.scorer.allowed
        rows = max(1, FIRST_ORDER_SCORES_MAX // len(allowed))
        first_order = torch.cat([chunk @ keys.T for chunk in grad.split(rows)])  # (L, A)
        positions = torch.arange(len(ids), device=ids.device)
        first_order[positions, _position_in(allowed, ids)] = -math.inf  # the token already there is no move
        values, top = first_order.topk(min(per_position, len(allowed)), dim=-1)
        tokens, finite = allowed[top].tolist(), values.isfinite().tolist()
        return [(i, v) for i in range(len(ids)) for v, ok in zip(tokens[i], finite[i]) if ok]

    # --- prune -------------------------------------------------------------------------------------
    def prune(self) -> None:
        """Greedy removals within a total budget of PRUNE_BUDGET x the similarity, never below the floor."""
        lowest = [max(self.floor[p], b.gain - PRUNE_BUDGET * abs(b.similarity)) for p, b in enumerate(self.best)]
        active = [p for p, b in enumerate(self.best) if len(b.token_ids) > 1]
        while active and not self.should_stop():
            texts, owner, repeated = [], [], []
            for p in active:
                ids = self.best[p].token_ids
                for i in range(len(ids)):
                    texts.append(self.scorer.decode(ids[:i] + ids[i + 1:]))
                    owner.append(p)
                    repeated.append(ids.count(ids[i]) > 1)
            texts, owner, repeated = _readable(self.scorer, texts, owner, repeated, self.best, self.longest)
            gains, sims = self.score(texts, owner)
            active = [p for p in active if self.prune_one(p, texts, owner, repeated, gains, sims, lowest[p])]

    def prune_one(self, p: int, texts, owner, repeated, gains, sims, lowest: float) -> bool:
        """Take problem p's best affordable removal; False when there is none (or one token is left)."""
        current = self.best[p].gain
        # free removals of repeated tokens first, then the cheapest affordable one
        rows = [j for j, q in enumerate(owner) if q == p and gains[j] >= lowest]
        if not rows:
            return False
        j = min(rows, key=lambda j: (not (repeated[j] and gains[j] >= current), -gains[j]))
        self.keep(p, texts[j], gains[j], sims[j])
        return len(self.best[p].token_ids) > 1


class _Fluency:
    """The language prior's part of polishing: its term in the gain, and the words it proposes."""

    def __init__(self, prior: TextPrior, weight: float, scorer: Scorer):
        self.prior, self.weight, self.scorer = prior, weight, scorer
        self.allowed = set(scorer.allowed.tolist())

    def gains(self, texts: Sequence[str], gains: list[float]) -> list[float]:
        return [g + self.weight * lp for g, lp in zip(gains, self.prior.log_probs(texts))]

    def proposals(self, best: list[Polished], problems: list[int], kept: dict[int, int], only: int | None,
                  grads: dict[int, torch.Tensor]) -> dict[int, list[tuple[int, int]]]:
        """(position, token) per problem: of the prior's ``PRIOR_POOL`` likeliest next words after each prefix
        (those one allowed token of the scorer spells, other than the token there), the ``PRIOR_PROPOSALS``
        of highest first-order gain, so that what reads well is also tried where it may match."""
        where = [(p, i) for p in problems for i in range(len(best[p].token_ids))
                 if (i == only if only is not None else i >= kept.get(p, 0))]
        prefixes = [self.scorer.decode(best[p].token_ids[:i]) for p, i in where]
        words = self.prior.next_words(prefixes, PRIOR_POOL) if where else []
        out: dict[int, list[tuple[int, int]]] = {p: [] for p in problems}
        for (p, i), options in zip(where, words):
            tokens = list(dict.fromkeys(ids[0] for ids in map(self.scorer.tokenize, options)
                                        if len(ids) == 1 and ids[0] in self.allowed and ids[0] != best[p].token_ids[i]))
            if tokens:
                first_order = self.scorer.table[torch.tensor(tokens, device=self.scorer.device)].float() @ grads[p][i]
                out[p] += [(i, tokens[k]) for k in first_order.topk(min(PRIOR_PROPOSALS, len(tokens))).indices.tolist()]
        return out


def _with(ids: list[int], changes: dict[int, int]) -> list[int]:
    return [changes.get(i, t) for i, t in enumerate(ids)]


def _position_in(allowed: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Index into ``allowed`` of each id, or a harmless index where an id is not allowed
    (a prompt given from outside may hold one); those rows then lose nothing but one candidate."""
    sorted_allowed, order = allowed.sort()
    where = torch.searchsorted(sorted_allowed, ids).clamp(max=len(allowed) - 1)
    return order[where]


def _readable(scorer: Scorer, texts: list[str], owner: list[int], extra: list, best: list[Polished],
              longest: list[int]):
    """Drop candidates that decode to nothing or to the prompt they came from, duplicates, and those that
    re-tokenize longer than the prompt polishing started from (pieces can merge and split anew)."""
    seen, keep = set(), []
    for j, (text, p) in enumerate(zip(texts, owner)):
        if (p, text) in seen or text == best[p].prompt or not text.strip() \
                or not 0 < len(scorer.tokenize(text)) <= longest[p]:
            continue
        seen.add((p, text))
        keep.append(j)
    return [texts[j] for j in keep], [owner[j] for j in keep], [extra[j] for j in keep]
