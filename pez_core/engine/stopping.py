"""The stopping rules a run checks at each host sync: the callback asked to stop; the best has not improved
for ``patience`` steps; the PEZ loop's share of the time budget is spent; every problem's best string reaches
the target similarity."""
from __future__ import annotations

import logging
import math
import time
import torch

from .config import Callback, PezConfig, Progress, clamp_similarity
from .scorer import Scorer

log = logging.getLogger(__name__)

IMPROVEMENT = 1e-4               # a gain smaller than this does not reset the patience count
# of a time budget, what the PEZ loop leaves to polishing: pruning alone needs little (measured: 17.6 of 34.8 s
# went unused when it had half)
POLISH_SHARE = {"off": 0.0, "prune": 0.1, "swap": 0.5, "swap+prune": 0.5}
TARGET_MARGIN = 0.05             # strings are checked against a target once their ids' similarity is this close


class Watch:
    """What the run loop does at each host sync: report progress, and decide whether to stop (the
    callback asked to; the best has not improved for ``patience`` steps; the PEZ loop's share of the
    time budget is spent; every problem's best string reaches the target similarity)."""

    def __init__(self, scorer: Scorer, config: PezConfig, callback: Callback | None, started: float):
        self.scorer, self.config, self.callback = scorer, config, callback
        self.reported = [-math.inf] * scorer.problems
        self.texts = [""] * scorer.problems
        self.last_gain_step = 0
        self.cancelled = False
        self.step = 0
        budget = config.time_budget
        self.deadline = None if budget is None else started + budget
        share = 1.0 - POLISH_SHARE[config.polish]
        self.loop_deadline = None if budget is None else started + share * budget
        self.string_similarity = [-math.inf] * scorer.problems  # of the best string, once checked

    def should_stop(self, step: int, best: tuple[list[float], list[float], list[list[int]]]) -> bool:
        """``best``: (gain, similarity, ids) of each problem's best prompt so far."""
        cfg = self.config
        self.step = step
        gains, similarities, ids = best
        changed = []
        for p, value in enumerate(gains):
            if value > self.reported[p] + IMPROVEMENT:
                self.last_gain_step = step
            if value > self.reported[p]:
                self.reported[p] = value
                self.texts[p] = self.scorer.decode(ids[p])
                changed.append(p)
        progress = Progress(step, cfg.steps, [clamp_similarity(v) for v in similarities], list(self.texts))
        if self.callback is not None and self.callback(progress):
            self.cancelled = True
            return True
        if cfg.patience is not None and step - self.last_gain_step >= cfg.patience:
            log.info("no gain for %d steps: stopping at step %d of %d", cfg.patience, step, cfg.steps)
            return True
        if self.loop_deadline is not None and time.perf_counter() >= self.loop_deadline:
            log.info("time budget: the PEZ loop stops at step %d of %d", step, cfg.steps)
            return True
        return cfg.target_similarity is not None and self.target_reached(changed, similarities)

    def target_reached(self, changed: list[int], similarities: list[float]) -> bool:
        """Whether every problem's best *string* reaches the target; strings are scored only when their
        ids' similarity comes close (decoding can lose a little, rarely gain)."""
        target = self.config.target_similarity
        check = [p for p in changed if similarities[p] >= target - TARGET_MARGIN and self.scorer.tokenize(self.texts[p])]
        if check:
            problems = torch.tensor(check, device=self.scorer.device)
            _, sims = self.scorer.score_texts([self.texts[p] for p in check], problems)
            for p, value in zip(check, sims.tolist()):
                self.string_similarity[p] = value
        if min(self.string_similarity) >= target:
            log.info("target similarity %.4f reached at step %d", target, self.step)
            return True
        return False

    def polishing(self, prompts: list[str], similarities: list[float]) -> bool:
        """Progress during polishing, shown as the stage "polishing"; True when the callback asks to stop."""
        if self.callback is None:
            return False
        stop = self.callback(Progress(self.step, self.config.steps, similarities, prompts, stage="polishing"))
        self.cancelled = self.cancelled or bool(stop)
        return bool(stop)
