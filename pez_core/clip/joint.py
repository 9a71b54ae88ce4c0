"""One hard prompt for several CLIP text towers at once (SDXL's CLIP-L + CLIP-G, SD3, ensembles).

Every CLIP text tower here reads the same CLIP BPE ids, so one hard prompt is one id sequence for
all of them. Each model keeps its own soft prompt in its own embedding space; the soft prompts lie
side by side in one tensor (the engine's soft prompt, width D_1 + ... + D_M). The projection picks,
per position, the allowed token maximising the weighted sum of the models' cosines: the nearest row
of the side-by-side normalised tables to the side-by-side, weighted, normalised soft prompts. Each
model's gain is taken at its own embedding of the shared ids, and its straight-through gradient
moves its own slice. The gain of a prompt is the weighted sum of the models' gains.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import torch
import torch.nn.functional as F

from ..common.errors import PezError
from ..engine.config import Callback, PezConfig, PezResult, clamp_similarity
from ..engine.loop import search
from ..engine.prior import TextPrior
from ..engine.scorer import Scorer
from .model import MAX_PROMPT_TOKENS, PezModel
from .objective import ClipScorer, Objective, check_template, with_reference

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JointModel:
    """Several ``PezModel`` read as one, each with a weight (normalised to sum 1). Build with ``combine``."""
    models: tuple[PezModel, ...]
    weights: tuple[float, ...]

    @property
    def device(self) -> torch.device:
        return self.models[0].device

    @property
    def name(self) -> str:
        return " + ".join(model_label(m) for m in self.models)

    def offload(self, device: str | torch.device = "cpu") -> None:
        for model in self.models:
            model.offload(device)

    def tokenize(self, text: str) -> list[int]:
        return self.models[0].tokenize(text)

    def __repr__(self) -> str:
        parts = ", ".join(f"{model_label(m)} × {w:.3g}" for m, w in zip(self.models, self.weights))
        return f"JointModel({parts})"


AnyModel = Union[PezModel, JointModel, Sequence[Union[PezModel, JointModel]]]  # what every task accepts


def model_label(model: PezModel) -> str:
    """A short name for a model: a checkpoint's file stem, else the name it was loaded by."""
    name = model.name
    return Path(name).stem if Path(name).suffix else name


def combine(models, weights: Sequence[float] | None = None) -> JointModel:
    """One ``JointModel`` of ``models`` (PezModels or JointModels, nested ones flattened) with ``weights``
    (default equal). A model given twice counts once with the sum of its weights; weight 0 drops it."""
    models = [models] if isinstance(models, (PezModel, JointModel)) else list(models)
    if not models:
        raise PezError("no models to combine; give at least one")
    weights = [1.0] * len(models) if weights is None else list(weights)
    if len(weights) != len(models):
        raise PezError(f"{len(weights)} weights for {len(models)} models; give one weight per model")
    merged: dict[int, list] = {}
    for i, (model, weight) in enumerate(zip(models, weights)):
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise PezError(f"weight {i + 1} must be a number of at least 0, got {weight!r}")
        if not isinstance(model, (PezModel, JointModel)):
            raise PezError(f"model {i + 1} is a {type(model).__name__}, not a PEZ model")
        for member, share in joint_members(model):
            merged.setdefault(id(member), [member, 0.0])[1] += weight * share
    kept = [(m, w) for m, w in merged.values() if w > 0]
    if not kept:
        raise PezError("every model has weight 0; give at least one model a positive weight")
    for model, _ in kept[1:]:
        if model.device != kept[0][0].device:
            raise PezError(f"{model_label(model)} is on {model.device} but {model_label(kept[0][0])} on "
                           f"{kept[0][0].device}; load the models to combine on the same device")
    total = sum(w for _, w in kept)
    return JointModel(tuple(m for m, _ in kept), tuple(w / total for _, w in kept))


def joint_members(model) -> list[tuple[PezModel, float]]:
    """(model, weight) of every CLIP a model stands for: a PezModel is itself with weight 1."""
    if isinstance(model, PezModel):
        return [(model, 1.0)]
    if isinstance(model, JointModel):
        return list(zip(model.models, model.weights))
    return joint_members(combine(model))


@dataclass
class JointResult(PezResult):
    """A ``PezResult`` whose ``similarity`` is the weighted joint one; ``similarities`` are each model's,
    in model order, of the same string."""
    similarities: list[float] = field(default_factory=list)


class JointScorer(Scorer):
    strings_per_step_prompt = ClipScorer.strings_per_step_prompt  # every tower runs in both

    """PEZ against several CLIP text towers sharing the CLIP tokenizer: the gain (and the reported
    similarity) of a prompt is the weighted sum of the models' own, each at its embedding of the ids."""
    max_prompt_len = MAX_PROMPT_TOKENS
    prompt_len_note = "CLIP's limit"

    def __init__(self, scorers: Sequence[ClipScorer], weights: Sequence[float]):
        if not scorers or len(weights) != len(scorers):
            raise PezError("a joint scorer needs one weight per model")
        first = scorers[0]
        for s in scorers[1:]:
            if s.problems != first.problems or s.device != first.device:
                raise PezError("the models of a joint search need the same problems and the same device")
            if not torch.equal(s.allowed, first.allowed):
                raise PezError("the models of a joint search allow different tokens; use one vocabulary")
        self.scorers, self.device = list(scorers), first.device
        self.problems, self.allowed = first.problems, first.allowed
        self.weights = torch.tensor([float(w) for w in weights], device=self.device)
        self.widths = [s.table.shape[1] for s in scorers]
        # the soft prompts lie side by side: one (V, D_1 + ... + D_M) table, in the members' common dtype
        # (SDXL in bf16: 49,408 × 2,048 × 2 bytes = 202 MB beside the towers' own tables)
        dtype = first.table.dtype
        for s in scorers[1:]:
            dtype = torch.promote_types(dtype, s.table.dtype)
        self.table = torch.cat([s.table.detach().to(dtype) for s in scorers], dim=-1)

    def _split(self, prompts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return prompts.split(self.widths, dim=-1)

    def _weighted(self, per_model: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        gains = torch.stack([g.float() for g, _ in per_model])
        sims = torch.stack([s.float() for _, s in per_model])
        return self.weights @ gains, self.weights @ sims

    def gains(self, prompts: torch.Tensor, problems: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._weighted([s.gains(part, problems) for s, part in zip(self.scorers, self._split(prompts))])

    @torch.no_grad()
    def score_texts(self, texts: Sequence[str], problems: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._weighted([s.score_texts(texts, problems) for s in self.scorers])

    @torch.no_grad()
    def reference_similarities(self, text: str, problems: torch.Tensor) -> torch.Tensor:
        return self.weights @ torch.stack([s.reference_similarities(text, problems).float() for s in self.scorers])

    @torch.no_grad()
    def similarities(self, texts: Sequence[str], problems: torch.Tensor) -> torch.Tensor:
        """(M, N) each model's similarity of each text to its problem's targets."""
        return torch.stack([s.score_texts(texts, problems)[1].float() for s in self.scorers])

    def bytes_per_prompt(self, prompt_len: int) -> int:
        """Every prompt goes through every tower in one backward, so the towers' activations add up
        (ViT-L-14 + ViT-bigG-14: 12·768 + 32·1280 = 50,176 width-layers a position, 5.4x ViT-L-14 alone)."""
        return sum(s.bytes_per_prompt(prompt_len) for s in self.scorers)

    def problem_keys(self) -> list[bytes]:
        return [b"".join(keys) for keys in zip(*(s.problem_keys() for s in self.scorers))]

    def decode(self, ids: Sequence[int]) -> str:
        return self.scorers[0].decode(ids)

    def tokenize(self, text: str) -> list[int]:
        return self.scorers[0].tokenize(text)

    def projection_keys(self) -> torch.Tensor:
        """(A, D_1 + ... + D_M): each model's normalised rows side by side, so that a key's dot product
        with ``projection_queries`` is the weighted sum of the models' cosines."""
        return torch.cat([F.normalize(s.table[self.allowed].float(), dim=-1) for s in self.scorers], dim=-1)

    def projection_queries(self, soft: torch.Tensor) -> torch.Tensor:
        return torch.cat([w * F.normalize(part, dim=-1) for w, part in zip(self.weights, self._split(soft))], dim=-1)


def optimize(model: JointModel, objectives: Sequence[Objective], config: PezConfig | None = None,
             callback: Callback | None = None, prior: TextPrior | None = None) -> list[JointResult]:
    """One hard prompt per problem for all of ``model``'s CLIPs at once; ``objectives[i]`` holds the
    targets as model i encodes them (the same problems, in the same order)."""
    config = config or PezConfig()
    config.validate(JointScorer)
    if len(objectives) != len(model.models):
        raise PezError(f"{len(objectives)} objectives for {len(model.models)} models; give one per model")
    template = check_template(model.models[0], config)
    scorer = JointScorer([ClipScorer(m, o, config.vocab, config.blocklist, config.allowlist, template)
                          for m, o in zip(model.models, objectives)], model.weights)
    results = search(scorer, config, template.framed_callback(callback), template.framed_prior(prior))
    problems = torch.arange(len(results), device=scorer.device)
    per_model = scorer.similarities([r.prompt for r in results], problems).T.cpu().tolist()
    results = with_reference([template.framed_result(r, model.models[0].tokenize) for r in results], scorer, template)
    return [JointResult(**dataclasses.asdict(r), similarities=[clamp_similarity(s) for s in sims])
            for r, sims in zip(results, per_model)]
