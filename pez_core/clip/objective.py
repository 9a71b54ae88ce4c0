"""What PEZ maximises on a CLIP: the cosine of a prompt's text feature to target features.

``Objective`` holds the targets (image or text features, with weights); ``ClipScorer`` gives the
search (``pez_core.engine``) everything it needs of one CLIP: its token table, the allowed tokens,
and the gain of prompts given as embeddings (in the search) or as strings (when choosing the result).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..common.errors import PezError
from ..engine.config import Callback, PezConfig, PezResult, clamp_similarity
from ..engine.loop import search
from ..engine.prior import TextPrior
from ..engine.scorer import Scorer, activation_bytes
from ..engine.template import Template
from .model import MAX_PROMPT_TOKENS, PezModel
from .tokenizer import allowed_token_ids

# What a result's similarity is measured against (``PezResult.reference_similarity``): a caption that says
# nothing in particular, so that a model's baseline shows (the bundled demo CLIP gives any image about 0.45).
# It names no medium, so it reads as plain for image targets and for a prompt to distill alike.
REFERENCE_CAPTION = "a picture"


@dataclass
class Objective:
    """Targets for P problems: unit features (P, T, D) and weights (P, T).

    A negative weight pushes the prompt away from that target. The gain of a prompt is
    sum_t w_t * cos_t / sum_{w_t > 0} w_t: one minus the paper's loss 1 - cosine for one target.
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

    @property
    def problems(self) -> int:
        return self.features.shape[0]

    def to(self, device) -> "Objective":
        return Objective(self.features.to(device), self.weights.to(device))

    def scores(self, text_features: torch.Tensor, problems: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gain, similarity to the positive targets), each (N,), of text features (N, D) for their problems (N,)."""
        cos = torch.einsum("nd,ntd->nt", text_features, self.features[problems])
        weights = self.weights[problems]
        positive = weights.clamp(min=0)
        total = positive.sum(-1)
        return (weights * cos).sum(-1) / total, (positive * cos).sum(-1) / total


class ClipScorer(Scorer):
    """PEZ against one CLIP text tower: a prompt's gain is its weighted cosine to its problem's targets."""
    max_prompt_len = MAX_PROMPT_TOKENS
    prompt_len_note = "CLIP's limit"
    # measured on ViT-B-32 (benchmarks/kicks.py): strings scored in batches cost about a fifteenth of a
    # prompt's forward and backward in a step
    strings_per_step_prompt = 16.0

    def __init__(self, model: PezModel, objective: Objective, vocab: str = "words", blocklist=None, allowlist=None,
                 template: Template = Template()):
        self.model, self.device, self.template = model, model.device, template
        self.objective = Objective(objective.features.float(), objective.weights.float()).to(model.device)
        self.problems = objective.problems
        self.allowed = allowed_token_ids(model.tokenizer, vocab, blocklist, allowlist).to(model.device)
        # the template's fixed tokens, embedded before and after the learned ones in every forward
        self.before, self.after = (torch.tensor(model.tokenize(t, "the template") if t.strip() else [],
                                                dtype=torch.long, device=model.device)
                                   for t in (template.before, template.after))
        self.fixed_tokens = len(self.before) + len(self.after)

    @property
    def table(self) -> torch.Tensor:
        return self.model.token_embeddings

    def gains(self, prompts: torch.Tensor, problems: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gain, similarity), each (N,), of prompt embeddings (N, L, D) for their problems (N,)."""
        if self.fixed_tokens:
            table, n = self.model.token_embeddings, len(prompts)
            prompts = torch.cat([table[self.before].expand(n, -1, -1).to(prompts.dtype), prompts,
                                 table[self.after].expand(n, -1, -1).to(prompts.dtype)], dim=1)
        return self.objective.scores(self.model.encode_embeddings(prompts), problems)

    @torch.no_grad()
    def score_texts(self, texts: Sequence[str], problems: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same for strings (inside the template), encoded as any CLIP text encoder reads them."""
        whole = [self.template.fill(t) for t in texts] if self.fixed_tokens else texts
        return self.objective.scores(self.model.encode_texts(whole), problems.to(self.device))

    @torch.no_grad()
    def reference_similarities(self, text: str, problems: torch.Tensor) -> torch.Tensor:
        """(N,) the similarity of one string (inside the template) to each problem's targets, as ``score_texts``
        measures it; encoded once, so it never depends on how many problems there are."""
        feature = self.model.encode_texts([self.template.fill(text)])
        return self.objective.scores(feature.expand(len(problems), -1), problems.to(self.device))[1]

    def bytes_per_prompt(self, prompt_len: int) -> int:
        """The text tower's backward for one prompt (and the template's fixed tokens) between its start and end."""
        model = self.model
        return activation_bytes(prompt_len + self.fixed_tokens + 2, model.text_width, model.text_layers,
                                model.dtype.itemsize)

    def problem_keys(self) -> list[bytes]:
        """Each problem's target features and weights, as bytes."""
        features, weights = self.objective.features.float().cpu(), self.objective.weights.float().cpu()
        return [features[p].numpy().tobytes() + weights[p].numpy().tobytes() for p in range(self.problems)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.model.decode(ids)

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text)


def optimize(model: PezModel, objective: Objective, config: PezConfig | None = None,
             callback: Callback | None = None, prior: TextPrior | None = None) -> list[PezResult]:
    """Find one hard prompt per problem of ``objective`` on a CLIP (see ``search``)."""
    config = config or PezConfig()
    config.validate(ClipScorer)
    template = check_template(model, config)
    scorer = ClipScorer(model, objective, config.vocab, config.blocklist, config.allowlist, template)
    results = search(scorer, config, template.framed_callback(callback), template.framed_prior(prior))
    return with_reference([template.framed_result(r, model.tokenize) for r in results], scorer, template)


def with_reference(results: list, scorer, template: Template) -> list:
    """``results`` with what ``REFERENCE_CAPTION`` (in the template: the learned words are what it lacks)
    scores against each one's targets, by the scorer that scored them."""
    problems = torch.arange(len(results), device=scorer.device)
    sims = scorer.reference_similarities(REFERENCE_CAPTION, problems).float().cpu().tolist()
    caption = template.fill(REFERENCE_CAPTION)
    return [dataclasses.replace(r, reference_similarity=clamp_similarity(s), reference_caption=caption)
            for r, s in zip(results, sims)]


def check_template(model: PezModel, config: PezConfig) -> Template:
    """The template of ``config``, refused when its fixed tokens and the prompt do not fit CLIP's 75 together."""
    template = Template.parse(config.template)
    fixed = sum(len(model.tokenize(t, "the template")) for t in (template.before, template.after) if t.strip())
    if fixed + config.prompt_len > MAX_PROMPT_TOKENS:
        room = MAX_PROMPT_TOKENS - fixed
        fix = f"lower prompt_length to {room} or shorten" if room > 0 else "shorten"
        raise PezError(f"the template's fixed words take {fixed} CLIP tokens and prompt_length is "
                       f"{config.prompt_len}: {fixed + config.prompt_len} in all, over CLIP's {MAX_PROMPT_TOKENS}; "
                       f"{fix} the template")
    return template
