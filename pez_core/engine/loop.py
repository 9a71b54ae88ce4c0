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

Batch invariance (``PezConfig.batch_invariant``): a problem's prompt then depends only on its own targets,
the settings and the seed, not on which problems share its run. Its random start comes from the seed and a
hash of its targets (``Scorer.problem_keys``); every text-tower call in the loop holds exactly
``INVARIANT_LANES`` problems (a short batch is padded), since a row's last float bits can depend on how many
rows its matrix product has, never on what the other rows hold; the strings are chosen, polished and judged
one problem at a time, with a prior whose cache is the problem's own.
"""
from __future__ import annotations

import dataclasses
import hashlib
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
INVARIANT_LANES = {"cpu": 8, "other": 32}  # problems per text-tower call in a batch-invariant run


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


def problem_seed(seed: int, key: bytes) -> int:
    """The seed of one problem of a batch-invariant run: ``seed`` mixed with the problem's own key."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8, key=seed.to_bytes(8, "little")).digest(), "little")


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
        self.invariant = config.batch_invariant
        self.scoped_priors: dict[int, TextPrior] = {}
        lanes = INVARIANT_LANES["cpu" if self.device.type == "cpu" else "other"]
        self.lane_rows = lanes * self.restarts if self.invariant else None  # rows of every text-tower call
        start = self.allowed.cpu()[self._random_start(config, batch)]
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
        self.batches = self._batches(self.lane_rows or config.max_batch or scorer.prompts_that_fit(config.prompt_len))

    def _random_start(self, config: PezConfig, rows: int) -> torch.Tensor:
        """Indices into ``allowed``, (rows, L): from the seed, or per problem from the seed and its key."""
        if not self.invariant:
            return random_indices(config.seed, len(self.allowed), (rows, config.prompt_len))
        return torch.cat([random_indices(problem_seed(config.seed, key), len(self.allowed),
                                         (self.restarts, config.prompt_len)) for key in self.scorer.problem_keys()])

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
        if self.lane_rows:  # chunks of one size, whatever the number of problems
            rows = min(rows, self.lane_rows * soft.shape[-2])
        nearest = torch.cat([(chunk @ self.projection_keys.T).argmax(dim=-1)[:len(real)]
                             for real, chunk in _chunks(queries, rows, pad=bool(self.lane_rows))])
        return self.allowed[nearest].view(soft.shape[:-1])

    def step(self) -> None:
        """One PEZ step, in place: project, score the hard prompt, move the soft prompt, keep the best."""
        ids = self.project(self.soft_prompt.detach())
        self.soft_prompt.grad.zero_()
        for rows in self.batches:
            prompt = straight_through(self.soft_prompt[rows], self.scorer.table[ids[rows]].float())
            gain, similarity = self._gains(prompt, self.problem_of_row[rows])
            (-gain).sum().backward()
            self._keep_best(rows, gain.detach(), similarity.detach(), ids[rows])
        self.optimizer.step()
        self._schedule_lr()

    def _gains(self, prompt: torch.Tensor, problems: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The scorer's gains; a batch-invariant run pads a short batch to ``lane_rows`` with copies of its
        first row, which carry no gradient and whose gains are dropped."""
        real = len(problems)
        if not self.lane_rows or real == self.lane_rows:
            return self.scorer.gains(prompt, problems)
        pad = self.lane_rows - real
        gain, similarity = self.scorer.gains(torch.cat([prompt, prompt[:1].detach().expand(pad, -1, -1)]),
                                             torch.cat([problems, problems[:1].expand(pad)]))
        return gain[:real], similarity[:real]

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
        log_probs = [lp for problems in self._problem_groups()
                     for lp in self.prior_of(problems[0]).log_probs([results[p].prompt for p in problems])]
        return [dataclasses.replace(r, perplexity=perplexity(lp), fluency_model=self.prior.name)
                for r, lp in zip(results, log_probs)]

    def polished(self, results: list[PezResult], watch: Watch, started: float) -> list[PezResult]:
        """The polishing stage (``pez_core.polish``) on each problem's best string, within the time budget:
        all problems together, or one at a time in a batch-invariant run."""
        loop_prompts = results[0].steps * self.restarts  # per problem
        found = []
        for problems in self._problem_groups():
            def report(prompts: list[str], similarities: list[float], first: int = problems[0]) -> "bool | None":
                rest = results[first + len(prompts):]  # not polished yet
                return watch.polishing([f.prompt for f in found] + prompts + [r.prompt for r in rest],
                                       [f.similarity for f in found] + similarities + [r.similarity for r in rest])
            work = KICK_WORK_SHARE * loop_prompts * len(problems) * self.scorer.strings_per_step_prompt
            scorer = self.scorer if len(problems) == self.problems else _OneProblem(self.scorer, problems[0])
            found += polish_prompts(scorer, [results[p].prompt for p in problems], self.config.polish,
                                    deadline=watch.deadline, target_similarity=self.config.target_similarity,
                                    report=report, kick_budget=None if watch.deadline is not None else int(work),
                                    prior=self.prior_of(problems[0]), fluency=self.config.fluency or 0.0)
        seconds = time.perf_counter() - started
        return [dataclasses.replace(r, prompt=f.prompt, token_ids=f.token_ids,
                                    similarity=clamp_similarity(f.similarity), seconds=seconds,
                                    stopped_early=r.stopped_early or watch.cancelled,
                                    polished=f.prompt != r.prompt, unpolished_prompt=r.prompt,
                                    unpolished_similarity=r.similarity)
                for r, f in zip(results, found)]

    def _problem_groups(self) -> list[list[int]]:
        """Problems whose strings are scored together: all of them, or each alone in a batch-invariant run."""
        return [[p] for p in range(self.problems)] if self.invariant else [list(range(self.problems))]

    def prior_of(self, problem: int) -> TextPrior | None:
        """The prior for a problem's strings: the run's, or in a batch-invariant run one of the problem's own."""
        if not self.invariant or self.prior is None:
            return self.prior
        if problem not in self.scoped_priors:
            self.scoped_priors[problem] = self.prior.scoped()
        return self.scoped_priors[problem]

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
        for problems in self._problem_groups():
            rows = [i for p in problems for i in range(p * R, (p + 1) * R) if readable[i]]
            some = [texts[i] for i in rows]
            scored = self.scorer.score_texts(some, self.problem_of_row[torch.tensor(rows, device=self.device)])
            gain[rows], similarity[rows] = scored[0].float().cpu(), scored[1].float().cpu()
            if self.prior is not None and self.config.fluency:  # the restart that reads best, other things equal
                gain[rows] += self.config.fluency * torch.tensor(self.prior_of(problems[0]).log_probs(some))
        results = []
        for p in range(P):
            best = p * R + int(gain[p * R:(p + 1) * R].argmax())
            token_ids = self.scorer.tokenize(texts[best])
            if token_ids != self.best_ids[best].tolist():
                log.debug("prompt %d re-tokenizes differently; its similarity is that of the string", p)
            results.append(PezResult(texts[best], clamp_similarity(float(similarity[best])), token_ids, steps,
                                     seconds, stopped))
        return results


def _chunks(rows: torch.Tensor, size: int, pad: bool):
    """(real rows, chunk) of at most ``size`` rows; with ``pad`` every chunk has ``size`` rows, the last one
    filled up with copies of its first row."""
    for real in rows.split(size):
        yield real, (torch.cat([real, real[:1].expand(size - len(real), *real.shape[1:])])
                     if pad and len(real) < size else real)


class _OneProblem(Scorer):
    """One problem of a scorer as a scorer of its own (problem 0 is ``problem`` of ``scorer``)."""

    def __init__(self, scorer: Scorer, problem: int):
        self.scorer, self.problem, self.problems = scorer, problem, 1
        self.device, self.allowed, self.table = scorer.device, scorer.allowed, scorer.table
        self.strings_per_step_prompt = scorer.strings_per_step_prompt
        self.max_prompt_len, self.prompt_len_note = scorer.max_prompt_len, scorer.prompt_len_note

    def gains(self, prompts: torch.Tensor, problems: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scorer.gains(prompts, torch.full_like(problems, self.problem))

    def score_texts(self, texts, problems: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scorer.score_texts(texts, torch.full_like(problems, self.problem))

    def bytes_per_prompt(self, prompt_len: int) -> int:
        return self.scorer.bytes_per_prompt(prompt_len)

    def decode(self, ids) -> str:
        return self.scorer.decode(ids)

    def tokenize(self, text: str) -> list[int]:
        return self.scorer.tokenize(text)

    def projection_keys(self) -> torch.Tensor:
        return self.scorer.projection_keys()

    def projection_queries(self, soft: torch.Tensor) -> torch.Tensor:
        return self.scorer.projection_queries(soft)
