"""The PEZ optimiser: hard prompts by projected gradient descent (Wen et al., 2023, Algorithm 1).

Each step of Algorithm 1, as ``Run.step`` does it::

    hard = project(soft)                          # nearest allowed token embedding, per position
    gain = scorer.gains(straight_through(soft, hard))   # the gain is taken at the hard prompt ...
    soft += AdamW step along grad(gain)           # ... and its gradient moves the soft prompt
    best = the best hard prompt seen so far

Restarts and several problems (e.g. one per image) run as one batch; the host is only consulted
every ``sync_every`` steps. What is scored is the scorer's business (``pez_core.clip.objective.ClipScorer``
for a CLIP); the search — projection, straight-through step, restarts, best tracking, stopping — is
this module's, for every scorer.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time

import numpy as np
import torch

from ..common import devices
from ..common.errors import PezError
from .config import Callback, PezConfig, PezResult, clamp_similarity
from .polish import polish_prompts
from .prior import TextPrior, perplexity
from .scorer import Scorer
from .cuda_graph import graphed_step
from .stopping import Watch

log = logging.getLogger(__name__)

PROJECTION_SCORES_MAX = 1 << 26  # fp32 scores held at once by the projection (256 MiB)
MEMORY_SHARE = 0.9               # of the free memory a run may plan to use
# without a time budget, polishing starts kicks (pez_core.engine.polish) only until the strings it has scored
# cost this share of the PEZ loop's work (steps x restarts x problems prompts, each worth the scorer's
# ``strings_per_step_prompt``): work, not time, so a result never depends on how busy the machine is
# (measured: benchmarks/README.md, "Kicks bounded by work")
KICK_WORK_SHARE = 1.0


def search(scorer: Scorer, config: PezConfig | None = None, callback: Callback | None = None,
           prior: TextPrior | None = None) -> list[PezResult]:
    """Find one hard prompt per problem of ``scorer``: the best projection seen, as in the reference.

    ``callback`` receives a ``Progress`` every ``sync_every`` steps; returning True stops the run,
    which then returns the best prompts so far. Exceptions raised by the callback propagate. With a
    ``prior`` and ``config.fluency`` > 0, the final choice and polishing also weigh how the strings read
    (``pez_core.engine.prior``), and each result reports its perplexity under the prior.
    """
    config = config or PezConfig()
    config.validate(scorer)
    started = time.perf_counter()  # a time budget counts the set-up too
    check_memory(scorer, config.for_device(scorer.device))
    # ComfyUI runs nodes under inference_mode; optimisation needs autograd.
    with torch.inference_mode(False), torch.enable_grad():
        return Run(scorer, config, prior).run(callback, started)


def check_memory(scorer: Scorer, config: PezConfig) -> None:
    """Refuse a run that cannot fit, before any of it is allocated, naming what to lower and how far.

    Per prompt position it holds the soft prompt, its gradient, AdamW's two moments, the hard embeddings
    and the projection's query (fp32) and the best ids (int64); besides, one chunk of projection scores
    and one batch of activations (batches are sized by ``scorer.prompts_that_fit``)."""
    free, width, allowed = devices.free_memory(scorer.device), scorer.table.shape[-1], len(scorer.allowed)
    fit = max(1, scorer.prompts_that_fit(config.prompt_len))
    activations = free // 2 // fit / (config.prompt_len + 2)  # per prompt position, what fit was sized by

    def need(problems: int, restarts: int, length: int) -> float:
        rows = problems * restarts
        batch = min(rows, max(1, fit // restarts) * restarts)
        return (rows * length * (6 * width * 4 + 8) + min(rows * length * allowed, PROJECTION_SCORES_MAX) * 4
                + batch * (length + 2) * activations)

    P, R, L = scorer.problems, config.restarts, config.prompt_len
    budget = free * MEMORY_SHARE
    if need(P, R, L) <= budget:
        return
    r = max((r for r in range(1, R) if need(P, r, L) <= budget), default=0)  # the most restarts that fit
    n = max((n for n in range(1, L) if need(P, R, n) <= budget), default=0)  # the longest prompt that fits
    fixes = [f"restarts from {R} to {r}"] * bool(r) + [f"prompt_length from {L} to {n}"] * bool(n)
    low, high = 0, P  # the most problems (e.g. images) that fit, by bisection
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if need(mid, R, L) <= budget else (low, mid - 1)
    fixes += [f"the number of images/problems from {P} to {low}"] if 0 < low < P else []
    raise PezError(f"this run needs about {need(P, R, L) / 2**30:.2f} GiB on {scorer.device} but "
                   f"{free / 2**30:.2f} GiB are free; lower " + (", or ".join(fixes) or "its size")
                   + " (or free memory)")


def random_indices(seed: int, high: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform indices below ``high`` from ``seed``. numpy's PCG64 takes all 64 bits of the seed; torch's CPU
    generator keeps 32, so seeds s and s + 2**32 would start alike."""
    return torch.from_numpy(np.random.default_rng(seed).integers(high, size=shape))


def straight_through(soft: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """``hard`` in the forward pass, the identity towards ``soft`` in the backward pass."""
    return soft + (hard - soft).detach()


class Run:
    """One optimisation: the state lives in fixed tensors updated in place, so a step can be replayed
    as a CUDA graph (``pez_core.cuda_graph``) as well as run eagerly."""

    def __init__(self, scorer: Scorer, config: PezConfig, prior: TextPrior | None = None):
        self.scorer, self.device, self.prior = scorer, scorer.device, prior
        self.config = config = config.for_device(scorer.device)
        self.problems, self.restarts = scorer.problems, config.restarts
        self.allowed = scorer.allowed
        # computed once per run: a projection is then one matmul and an argmax
        self.projection_keys = scorer.projection_keys()

        batch = self.problems * self.restarts
        self.problem_of_row = torch.arange(self.problems, device=self.device).repeat_interleave(self.restarts)
        start = self.allowed.cpu()[random_indices(config.seed, len(self.allowed), (batch, config.prompt_len))]
        self.soft_prompt = scorer.table[start.to(self.device)].float().clone().requires_grad_(True)
        self.soft_prompt.grad = torch.zeros_like(self.soft_prompt)
        # the learning rate is a tensor updated in place, so a schedule runs inside a CUDA graph too
        self.lr = torch.tensor(config.lr, device=self.device)
        self.steps_done = torch.zeros((), device=self.device)
        self.optimizer = torch.optim.AdamW([self.soft_prompt], lr=self.lr, weight_decay=config.weight_decay,
                                           capturable=self.device.type == "cuda")
        self.best_gain = torch.full((batch,), -math.inf, device=self.device)
        self.best_similarity = torch.zeros(batch, device=self.device)
        self.best_ids = start.to(self.device)
        self.batches = self._batches(config.max_batch or scorer.prompts_that_fit(config.prompt_len))

    def _batches(self, max_prompts: int) -> list[slice]:
        """Rows of whole problems (all their restarts), at most ``max_prompts`` prompts where possible.
        Usually one batch holds everything."""
        per_batch = max(1, max_prompts // self.restarts)
        if per_batch == 1 and self.restarts > max_prompts:
            log.warning("%d restarts exceed the %d prompts that fit in memory at once; trying anyway",
                        self.restarts, max_prompts)
        if per_batch < self.problems:
            log.info("%d prompts in batches of %d to fit in memory", self.problems * self.restarts,
                     per_batch * self.restarts)
        R = self.restarts
        return [slice(first * R, min(first + per_batch, self.problems) * R)
                for first in range(0, self.problems, per_batch)]

    def project(self, soft: torch.Tensor) -> torch.Tensor:
        """Nearest allowed token (by cosine, unless the scorer says otherwise) for every position → ids (B, L)."""
        queries = self.scorer.projection_queries(soft).flatten(0, -2)
        # row chunks bound the (rows × vocabulary) score matrix: many images × restarts × tokens stay in memory
        rows = max(1, PROJECTION_SCORES_MAX // len(self.allowed))
        nearest = torch.cat([(chunk @ self.projection_keys.T).argmax(dim=-1) for chunk in queries.split(rows)])
        return self.allowed[nearest].view(soft.shape[:-1])

    def step(self) -> None:
        """One PEZ step, in place: project, score the hard prompt, move the soft prompt, keep the best."""
        ids = self.project(self.soft_prompt.detach())
        self.soft_prompt.grad.zero_()
        for rows in self.batches:
            prompt = straight_through(self.soft_prompt[rows], self.scorer.table[ids[rows]].float())
            gain, similarity = self.scorer.gains(prompt, self.problem_of_row[rows])
            (-gain).sum().backward()
            self._keep_best(rows, gain.detach(), similarity.detach(), ids[rows])
        self.optimizer.step()
        self._schedule_lr()

    @torch.no_grad()
    def _keep_best(self, rows: slice, gain: torch.Tensor, similarity: torch.Tensor, ids: torch.Tensor) -> None:
        better = gain > self.best_gain[rows]
        self.best_gain[rows] = torch.where(better, gain, self.best_gain[rows])
        self.best_similarity[rows] = torch.where(better, similarity, self.best_similarity[rows])
        self.best_ids[rows] = torch.where(better[:, None], ids, self.best_ids[rows])

    @torch.no_grad()
    def _schedule_lr(self) -> None:
        if self.config.lr_schedule == "cosine":  # CosineAnnealingLR(T_max=steps) in closed form, on the device
            self.steps_done += 1
            self.lr.copy_(self.config.lr * 0.5 * (1 + torch.cos(self.steps_done * (math.pi / self.config.steps))))

    def run(self, callback: Callback | None, started: float | None = None) -> list[PezResult]:
        started = time.perf_counter() if started is None else started
        watch = Watch(self.scorer, self.config, callback, started)
        replay, step = graphed_step(self, self.config.steps)  # may run a few warm-up steps first
        while step < self.config.steps:
            for _ in range(min(self.config.sync_every - step % self.config.sync_every, self.config.steps - step)):
                replay()
                step += 1
            if watch.should_stop(step, self.best_per_problem()):
                break
        results = self.finish(step, time.perf_counter() - started, stopped=step < self.config.steps)
        if self.config.polish != "off" and not watch.cancelled:
            results = self.polished(results, watch, started)
        return self.judged(results)

    def judged(self, results: list[PezResult]) -> list[PezResult]:
        """Each result with its perplexity under the prior (as it is when there is none)."""
        if self.prior is None:
            return results
        log_probs = self.prior.log_probs([r.prompt for r in results])
        return [dataclasses.replace(r, perplexity=perplexity(lp), fluency_model=self.prior.name)
                for r, lp in zip(results, log_probs)]

    def polished(self, results: list[PezResult], watch: Watch, started: float) -> list[PezResult]:
        """The polishing stage (``pez_core.polish``) on each problem's best string, within the time budget."""
        loop_prompts = results[0].steps * self.problems * self.restarts
        work = KICK_WORK_SHARE * loop_prompts * self.scorer.strings_per_step_prompt
        kick_budget = None if watch.deadline is not None else int(work)
        found = polish_prompts(self.scorer, [r.prompt for r in results], self.config.polish,
                               deadline=watch.deadline, target_similarity=self.config.target_similarity,
                               report=watch.polishing, kick_budget=kick_budget, prior=self.prior,
                               fluency=self.config.fluency or 0.0)
        seconds = time.perf_counter() - started
        return [dataclasses.replace(r, prompt=f.prompt, token_ids=f.token_ids,
                                    similarity=clamp_similarity(f.similarity), seconds=seconds,
                                    polished=f.prompt != r.prompt, unpolished_prompt=r.prompt,
                                    unpolished_similarity=r.similarity)
                for r, f in zip(results, found)]

    def best_per_problem(self) -> tuple[list[float], list[float], list[list[int]]]:
        """(gain, similarity, ids) of each problem's best restart so far; the host syncs here."""
        P, R = self.problems, self.restarts
        gain, restart = self.best_gain.view(P, R).max(dim=1)
        similarity = self.best_similarity.view(P, R).gather(1, restart[:, None]).flatten()
        ids = self.best_ids.view(P, R, -1)[torch.arange(P, device=self.device), restart]
        return gain.tolist(), similarity.tolist(), ids.tolist()

    def finish(self, steps: int, seconds: float, stopped: bool) -> list[PezResult]:
        """Decode every restart's best prompt, score the *strings*, and keep each problem's best string.

        Decoding and re-tokenizing can merge or split tokens, so the returned similarity is
        measured on the string a user gets, never on ids it no longer maps to.
        """
        P, R = self.problems, self.restarts
        texts = [self.scorer.decode(ids) for ids in self.best_ids.tolist()]
        readable = [bool(self.scorer.tokenize(t)) for t in texts]  # whitespace-only decodes are lost
        if not all(any(readable[p * R:(p + 1) * R]) for p in range(P)):
            raise PezError("every prompt found decodes to whitespace; use the 'words' or 'ascii' vocabulary")
        gain = torch.full((P * R,), -math.inf)
        similarity = torch.zeros(P * R)
        rows = torch.tensor([i for i, ok in enumerate(readable) if ok])
        scored = self.scorer.score_texts([texts[i] for i in rows.tolist()], self.problem_of_row[rows.to(self.device)])
        gain[rows], similarity[rows] = scored[0].float().cpu(), scored[1].float().cpu()
        if self.prior is not None and self.config.fluency:  # the restart that reads best, other things equal
            gain[rows] += self.config.fluency * torch.tensor(self.prior.log_probs([texts[i] for i in rows.tolist()]))
        results = []
        for p in range(P):
            best = p * R + int(gain[p * R:(p + 1) * R].argmax())
            token_ids = self.scorer.tokenize(texts[best])
            if token_ids != self.best_ids[best].tolist():
                log.debug("prompt %d re-tokenizes differently; its similarity is that of the string", p)
            results.append(PezResult(texts[best], clamp_similarity(float(similarity[best])), token_ids, steps,
                                     seconds, stopped))
        return results
