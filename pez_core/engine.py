"""The PEZ optimiser: hard prompts by projected gradient descent (Wen et al., 2023, Algorithm 1).

Each step projects the continuous prompt onto the nearest allowed token embeddings,
scores the *projected* (hard) prompt, and applies that gradient to the continuous
prompt (straight-through). Restarts and several problems (e.g. one per image) run as
one batch. The host is only consulted every ``sync_every`` steps.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import PezError
from .models import MAX_PROMPT_TOKENS, PezModel
from .vocab import allowed_token_ids

log = logging.getLogger(__name__)

LR_SCHEDULES = ("constant", "cosine")
PROJECTION_SCORES_MAX = 1 << 26  # fp32 scores held at once by the projection (256 MiB)
# what backward keeps per prompt position, text width and layer, in elements of the model's dtype:
# measured 10.1 for open_clip's text blocks (tests/test_core.py checks the bound), plus headroom
ACTIVATION_ELEMENTS = 16


@dataclass(frozen=True)
class PezConfig:
    prompt_len: int = 16            # the paper's most transferable length
    steps: int = 3000               # the paper's default
    restarts: int | None = None     # parallel random starts per problem; None: 8 on CUDA, 1 elsewhere
    lr: float = 0.1
    weight_decay: float = 0.1
    seed: int = 0
    vocab: str = "words"
    blocklist: str | Sequence[str] | None = None
    allowlist: str | Sequence[str] | None = None
    lr_schedule: str = "constant"
    patience: int | None = None     # stop once the best has not improved for this many steps
    sync_every: int = 20            # steps between host syncs (progress, cancel, plateau check)
    max_batch: int | None = None    # prompts through the text tower at once; None: what half the free memory holds

    def validate(self) -> None:
        if not isinstance(self.prompt_len, int) or not 1 <= self.prompt_len <= MAX_PROMPT_TOKENS:
            raise PezError(f"prompt length must be an integer from 1 to {MAX_PROMPT_TOKENS} (CLIP's limit), "
                           f"got {self.prompt_len!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise PezError(f"steps must be a positive integer, got {self.steps!r}")
        if self.restarts is not None and (not isinstance(self.restarts, int) or self.restarts < 1):
            raise PezError(f"restarts must be a positive integer, got {self.restarts!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise PezError(f"learning rate must be a positive number, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise PezError(f"weight decay must be zero or positive, got {self.weight_decay!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise PezError(f"unknown lr schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if self.patience is not None and self.patience < 1:
            raise PezError(f"patience must be a positive number of steps, got {self.patience!r}")
        if self.sync_every < 1:
            raise PezError(f"sync_every must be positive, got {self.sync_every!r}")
        if self.max_batch is not None and (not isinstance(self.max_batch, int) or self.max_batch < 1):
            raise PezError(f"max_batch must be a positive integer (or None for automatic), got {self.max_batch!r}")


@dataclass
class Objective:
    """Targets for P problems: unit features (P, T, D) and weights (P, T).

    A negative weight pushes the prompt away from that target. The loss of a prompt is
    sum_t w_t * (1 - cos_t) / sum_{w_t > 0} w_t, the paper's 1 - cosine for one target.
    """
    features: torch.Tensor
    weights: torch.Tensor

    def __post_init__(self):
        if self.features.ndim != 3 or self.weights.shape != self.features.shape[:2]:
            raise PezError("an objective needs features (P, T, D) and weights (P, T)")
        if not (self.weights > 0).any(dim=1).all():
            raise PezError("every problem needs at least one target with a positive weight")
        if not torch.isfinite(self.features).all():
            raise PezError("the target features contain NaN or infinite values")

    @classmethod
    def stack(cls, targets: Sequence[Sequence[tuple[torch.Tensor, float]]]) -> "Objective":
        """One problem per entry, each a list of (feature (D,), weight)."""
        if not targets:
            raise PezError("no targets were given")
        width = max(len(t) for t in targets)
        dim = targets[0][0][0].shape[-1]
        feats = torch.zeros(len(targets), width, dim)
        weights = torch.zeros(len(targets), width)
        for p, problem in enumerate(targets):
            for t, (feat, weight) in enumerate(problem):
                feats[p, t], weights[p, t] = feat.detach().float().cpu(), weight
        return cls(F.normalize(feats, dim=-1), weights)

    def to(self, device) -> "Objective":
        return Objective(self.features.to(device), self.weights.to(device))

    def scores(self, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective, similarity to the positive targets) for features (P, R, D) → each (P, R)."""
        cos = torch.einsum("prd,ptd->prt", text_features, self.features)
        weights = self.weights[:, None, :]
        positive = weights.clamp(min=0)
        total = positive.sum(-1)
        return (weights * cos).sum(-1) / total, (positive * cos).sum(-1) / total


@dataclass
class Progress:
    step: int
    total: int
    similarities: list[float]     # best so far, per problem
    prompts: list[str]            # best so far, per problem

    @property
    def similarity(self) -> float:
        return sum(self.similarities) / len(self.similarities)

    @property
    def prompt(self) -> str:
        return self.prompts[0]


@dataclass
class PezResult:
    prompt: str
    similarity: float             # of the returned string, re-encoded as any CLIP text encoder sees it
    token_ids: list[int]          # the ids ``prompt`` tokenizes to
    steps: int
    seconds: float
    stopped_early: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


Callback = Callable[[Progress], "bool | None"]


def optimize(model: PezModel, objective: Objective, config: PezConfig | None = None,
             callback: Callback | None = None) -> list[PezResult]:
    """Find one hard prompt per problem of ``objective``.

    ``callback`` receives a ``Progress`` every ``sync_every`` steps; returning True stops the run,
    which then returns the best prompts so far. Exceptions raised by the callback propagate.
    """
    config = config or PezConfig()
    config.validate()
    # ComfyUI runs nodes under inference_mode; optimisation needs autograd.
    with torch.inference_mode(False), torch.enable_grad():
        return _Run(model, objective, config).run(callback)


def prompts_that_fit(model: PezModel, prompt_len: int) -> int:
    """How many prompts the text tower's backward can take at once in half the free memory."""
    per_prompt = ACTIVATION_ELEMENTS * (prompt_len + 2) * model.text_width * model.text_layers * model.dtype.itemsize
    return max(1, free_memory(model.device) // 2 // per_prompt)


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` now (RAM for the CPU; 4 GiB where it cannot be told)."""
    if device.type == "cuda":  # what the driver has free plus what torch's cache holds unused
        return torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        import psutil
        return psutil.virtual_memory().available
    except ImportError:
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 4 << 30


class _Run:
    """One optimisation: the state lives in fixed tensors updated in place, so a step can be replayed
    as a CUDA graph (``pez_core.cuda_graph``) as well as run eagerly."""

    def __init__(self, model: PezModel, objective: Objective, config: PezConfig):
        self.model, self.config = model, config
        device = model.device
        self.problems = objective.features.shape[0]
        self.restarts = config.restarts or (8 if device.type == "cuda" else 1)
        self.objective = Objective(objective.features.clone().float(), objective.weights.clone().float()).to(device)
        self.allowed = allowed_token_ids(model.tokenizer, config.vocab, config.blocklist, config.allowlist).to(device)
        self.table = model.token_embeddings
        # normalised once per run: projection is then one matmul + argmax on the device
        self.vocab = F.normalize(self.table[self.allowed].float(), dim=-1)

        batch = self.problems * self.restarts
        generator = torch.Generator().manual_seed(config.seed)
        start = self.allowed.cpu()[torch.randint(len(self.allowed), (batch, config.prompt_len), generator=generator)]
        self.prompt = self.table[start.to(device)].float().clone().requires_grad_(True)  # the soft prompt P
        self.prompt.grad = torch.zeros_like(self.prompt)
        # the learning rate is a tensor updated in place, so a schedule runs inside a CUDA graph too
        self.lr = torch.tensor(config.lr, device=device)
        self.steps_done = torch.zeros((), device=device)
        self.optimizer = torch.optim.AdamW([self.prompt], lr=self.lr, weight_decay=config.weight_decay,
                                           capturable=device.type == "cuda")
        self.best_objective = torch.full((batch,), -math.inf, device=device)
        self.best_similarity = torch.zeros(batch, device=device)
        self.best_ids = start.to(device)
        self.batches = self._batches(config.max_batch or prompts_that_fit(model, config.prompt_len))

    def _batches(self, max_prompts: int) -> list[tuple[slice, Objective]]:
        """Whole problems at a time (all their restarts), at most ``max_prompts`` prompts where possible:
        (rows of the batch, the objective of those problems). Usually one batch holds everything."""
        per_batch = max(1, max_prompts // self.restarts)
        if per_batch == 1 and self.restarts > max_prompts:
            log.warning("%d restarts exceed the %d prompts that fit in memory at once; trying anyway",
                        self.restarts, max_prompts)
        if per_batch < self.problems:
            log.info("%d prompts in batches of %d to fit in memory", self.problems * self.restarts,
                     per_batch * self.restarts)
        batches = []
        for first in range(0, self.problems, per_batch):
            last = min(first + per_batch, self.problems)
            objective = Objective(self.objective.features[first:last], self.objective.weights[first:last])
            batches.append((slice(first * self.restarts, last * self.restarts), objective))
        return batches

    def project(self, prompt: torch.Tensor) -> torch.Tensor:
        """Nearest allowed token (by cosine) for every row of the continuous prompt → ids (B, L)."""
        queries = F.normalize(prompt, dim=-1).flatten(0, -2)
        # row chunks bound the (rows × vocabulary) score matrix: many images × restarts × tokens stay in memory
        rows = max(1, PROJECTION_SCORES_MAX // len(self.allowed))
        nearest = torch.cat([(chunk @ self.vocab.T).argmax(dim=-1) for chunk in queries.split(rows)])
        return self.allowed[nearest].view(prompt.shape[:-1])

    def step(self) -> None:
        """One PEZ step, in place: project, score the hard prompt, move the soft prompt, track the best."""
        ids = self.project(self.prompt.detach())
        hard = self.table[ids].float()
        self.prompt.grad.zero_()
        for rows, objective in self.batches:
            prompt = self.prompt[rows]
            # straight-through: the loss is taken at the projection, its gradient moves the soft prompt
            features = self.model.encode_embeddings(prompt + (hard[rows] - prompt).detach())
            scores, similarity = objective.scores(features.view(-1, self.restarts, features.shape[-1]))
            (1 - scores).sum().backward()
            self._track_best(rows, scores.detach().flatten(), similarity.detach().flatten(), ids[rows])
        self.optimizer.step()
        if self.config.lr_schedule == "cosine":  # CosineAnnealingLR(T_max=steps) in closed form
            self.steps_done += 1
            self.lr.copy_(self.config.lr * 0.5 * (1 + torch.cos(self.steps_done * (math.pi / self.config.steps))))

    @torch.no_grad()
    def _track_best(self, rows: slice, objective: torch.Tensor, similarity: torch.Tensor, ids: torch.Tensor) -> None:
        better = objective > self.best_objective[rows]
        self.best_objective[rows] = torch.where(better, objective, self.best_objective[rows])
        self.best_similarity[rows] = torch.where(better, similarity, self.best_similarity[rows])
        self.best_ids[rows] = torch.where(better[:, None], ids, self.best_ids[rows])

    def run(self, callback: Callback | None) -> list[PezResult]:
        from .cuda_graph import graphed_step

        cfg, model = self.config, self.model
        P, R, L = self.problems, self.restarts, cfg.prompt_len
        started = time.perf_counter()
        replay, step = graphed_step(self, cfg.steps)  # may run a few warm-up steps first
        reported = [-math.inf] * P
        texts = [""] * P
        last_gain_step, stopped = 0, False
        while step < cfg.steps:
            for _ in range(min(cfg.sync_every - step % cfg.sync_every, cfg.steps - step)):
                replay()
                step += 1
            per_problem = self.best_objective.view(P, R).max(dim=1)   # the host syncs here only
            for p, value in enumerate(per_problem.values.tolist()):
                if value > reported[p] + 1e-4:
                    last_gain_step = step
                if value > reported[p]:
                    reported[p] = value
                    texts[p] = model.decode(self.best_ids.view(P, R, L)[p, per_problem.indices[p]].tolist())
            if callback is not None:
                sims = self.best_similarity.view(P, R).gather(1, per_problem.indices[:, None]).flatten().tolist()
                if callback(Progress(step, cfg.steps, sims, list(texts))):
                    stopped = step < cfg.steps
                    break
            if cfg.patience is not None and step - last_gain_step >= cfg.patience:
                log.info("no gain for %d steps: stopping at step %d of %d", cfg.patience, step, cfg.steps)
                stopped = step < cfg.steps
                break
        return self.finish(self.best_ids.view(P, R, L), step, time.perf_counter() - started, stopped)

    def finish(self, candidates: torch.Tensor, steps: int, seconds: float, stopped: bool) -> list[PezResult]:
        """Decode every restart's best prompt, re-encode the *strings*, and keep the best string.

        Decoding and re-tokenizing can merge or split tokens, so the returned similarity is
        measured on the string a user gets, never on ids it no longer maps to.
        """
        model = self.model
        P, R, _ = candidates.shape
        texts = [model.decode(ids) for ids in candidates.reshape(P * R, -1).tolist()]
        readable = torch.tensor([bool(model.tokenize(t)) for t in texts])  # whitespace-only decodes are lost
        if not readable.view(P, R).any(dim=1).all():
            raise PezError("every prompt found decodes to whitespace; use the 'words' or 'ascii' vocabulary")
        features = torch.zeros(P * R, self.objective.features.shape[-1], device=model.device)
        with torch.no_grad():
            features[readable.to(model.device)] = model.encode_texts([t for t, ok in zip(texts, readable) if ok])
            objective, similarity = self.objective.scores(features.view(P, R, -1))
        objective = objective.masked_fill(~readable.view(P, R).to(model.device), -math.inf)
        results = []
        for p in range(P):
            r = int(objective[p].argmax())
            text = texts[p * R + r]
            token_ids = model.tokenize(text)
            if token_ids != candidates[p, r].tolist():
                log.debug("prompt %d re-tokenizes differently; its similarity is that of the string", p)
            results.append(PezResult(text, float(similarity[p, r]), token_ids, steps, seconds, stopped))
        return results
