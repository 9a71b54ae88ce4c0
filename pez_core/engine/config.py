"""Every setting of a PEZ run (``PezConfig``), what a run reports as it goes (``Progress``) and returns
(``PezResult``), and the bounds every model family shares."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Callable, Protocol, Sequence

import torch

from ..common.errors import PezError
from .polish import POLISH_MODES
from .prior import FLUENCY_MAX
from .template import SLOT, Template
from .vocabulary import VOCAB_MODES

LR_SCHEDULES = ("constant", "cosine")
MAX_STEPS = 100_000
MAX_RESTARTS = 64
LR_RANGE = (0.001, 10.0)
SEED_MAX = 2**64 - 1             # ComfyUI's seed widget allows this much; every seed gives its own start
MAX_PROMPT_LEN = 75              # the longest prompt the engine learns; a scorer may allow less (CLIP: 75 too)


class PromptLimit(Protocol):
    """How long a prompt a scorer's model reads (every ``Scorer`` says so), and why, for the error."""
    max_prompt_len: int
    prompt_len_note: str


@dataclass(frozen=True)
class PezConfig:
    """Every setting of a PEZ run, with the defaults the nodes, the CLI and the library share."""
    prompt_len: int = 8             # measured (benchmarks/README.md): 16, the paper's, adds stray words
    steps: int = 3000               # the paper's default
    restarts: int | None = None     # parallel random starts per problem; None: 8 on CUDA, 1 elsewhere
    lr: float = 0.1                 # the paper's AdamW learning rate
    weight_decay: float = 0.1       # and weight decay
    seed: int = 0
    vocab: str = "words"
    blocklist: str | Sequence[str] | None = None
    allowlist: str | Sequence[str] | None = None
    lr_schedule: str = "constant"
    patience: int | None = None     # stop once the best has not improved for this many steps
    sync_every: int | None = None   # steps between host syncs (progress, cancel, stopping); None: 2 on CPU, 20 on GPU
    max_batch: int | None = None    # prompts through the model at once; None: what half the free memory holds
    polish: str = "swap+prune"      # after the loop: off, prune, swap, swap+prune (measured: benchmarks/README.md)
    time_budget: float | None = None        # seconds for the whole run, polishing included
    target_similarity: float | None = None  # stop once every problem's best string reaches this
    fluency: float | None = None    # weight of the language prior in the final choice and polishing; 0: none;
                                    # None: the model's default (READABLE_FLUENCY where it is measured to pay)
    fluency_model: str | None = None        # the prior's causal LM (name or path); None: the model's default
    template: str = SLOT            # the user's words around the learned ones, e.g. "a tiger, {}" (engine.template)
    batch_invariant: bool = False   # each problem's prompt depends only on its own targets, the settings and the
                                    # seed, never on the other problems of its run (pez_core.engine.loop, "Batch
                                    # invariance"); a dataset job needs it, and it costs a little speed

    def validate(self, limit: "PromptLimit | None" = None) -> None:
        """Refuse settings no run can use, naming the fix. ``limit`` (a scorer or its class) says how long a
        prompt its model reads; without one, the engine's own bound holds."""
        high, note = (limit.max_prompt_len, limit.prompt_len_note) if limit is not None else \
            (MAX_PROMPT_LEN, "the longest prompt the PEZ engine learns")
        _check_int("prompt length", self.prompt_len, 1, high, f" ({note})")
        _check_int("steps", self.steps, 1, MAX_STEPS)
        _check_int("seed", self.seed, 0, SEED_MAX)
        if self.restarts is not None:
            _check_int("restarts", self.restarts, 1, MAX_RESTARTS)
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr <= LR_RANGE[1]):
            raise PezError(f"learning rate must be a number above 0 and at most {LR_RANGE[1]}, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                and self.weight_decay >= 0):
            raise PezError(f"weight decay must be zero or positive, got {self.weight_decay!r}")
        if self.vocab not in VOCAB_MODES:
            raise PezError(f"unknown vocabulary mode {self.vocab!r}; choose one of {', '.join(VOCAB_MODES)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise PezError(f"unknown lr schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        for name in ("patience", "sync_every", "max_batch"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1, None)
        if self.polish not in POLISH_MODES:
            raise PezError(f"unknown polish mode {self.polish!r}; choose one of {', '.join(POLISH_MODES)}")
        if self.time_budget is not None and not (isinstance(self.time_budget, (int, float))
                                                 and math.isfinite(self.time_budget) and self.time_budget > 0):
            raise PezError(f"time budget must be a number of seconds above 0, got {self.time_budget!r}")
        if self.target_similarity is not None and not (isinstance(self.target_similarity, (int, float))
                                                       and -1 < self.target_similarity <= 1):
            raise PezError(f"target similarity must be a number above -1 and at most 1, got {self.target_similarity!r}")
        if self.fluency is not None and not (isinstance(self.fluency, (int, float)) and 0 <= self.fluency <= FLUENCY_MAX):
            raise PezError(f"fluency must be a number from 0 (off) to {FLUENCY_MAX:g}, got {self.fluency!r}")
        Template.parse(self.template)
        if not isinstance(self.batch_invariant, bool):
            raise PezError(f"batch_invariant must be True or False, got {self.batch_invariant!r}")
        if self.fluency_model is not None and not (isinstance(self.fluency_model, str) and self.fluency_model.strip()):
            raise PezError(f"fluency model must be a language model's name or path, got {self.fluency_model!r}")

    def for_device(self, device: torch.device) -> "PezConfig":
        """The device-dependent settings filled in: a GPU stalls at every host sync and runs restarts nearly
        for free; on the CPU a sync costs nothing next to a step, so it syncs often (Cancel is seen at once)."""
        gpu = device.type == "cuda"
        return dataclasses.replace(self, restarts=self.restarts or (8 if gpu else 1),
                                   sync_every=self.sync_every or (20 if gpu else 2))


def _check_int(name: str, value, low: int, high: int | None, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"from {low} to {high}{why}" if high is not None else f"of at least {low}"
        raise PezError(f"{name} must be an integer {span}, got {value!r}")


@dataclass
class Progress:
    step: int
    total: int
    similarities: list[float]     # best so far, per problem
    prompts: list[str]            # best so far, per problem
    stage: str = "pez"            # "pez" in the PEZ loop, "polishing" after it

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
    stopped_early: bool = False   # a stopping rule or a stop request ended the loop or polishing
    polished: bool = False                     # polishing changed the prompt
    unpolished_prompt: str | None = None       # what the PEZ loop found (None: polishing was off)
    unpolished_similarity: float | None = None
    perplexity: float | None = None            # per token, under the fluency prior (None: no prior)
    fluency_model: str | None = None           # the prior that judged it
    learned_prompt: str | None = None          # with a template: the slot's words alone (``prompt`` is whole)
    # a plain caption's similarity to the same targets, by the same measure: what saying nothing in particular
    # scores on this model (pez_core.clip.objective.REFERENCE_CAPTION); None where no scorer gave one
    reference_similarity: float | None = None
    reference_caption: str | None = None       # that caption, inside the template when there is one

    def to_dict(self) -> dict:
        return asdict(self)


def clamp_similarity(value: float) -> float:
    """Cosines are in [-1, 1]; float rounding can put a text scored against itself at 1.0000001."""
    return min(1.0, max(-1.0, value))


Callback = Callable[[Progress], "bool | None"]
