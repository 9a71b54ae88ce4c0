"""PEZ for causal language models: hard prompts that make an LM classify text (Wen et al., 2023).

A *template* places the input and the prompt, e.g. ``"{input} {prompt} it was"``; a *verbalizer* maps each
label to words (``"positive:great,negative:terrible"``). The LM reads the filled template and its next-token
logits over the verbalizer's tokens are the class scores. ``LmScorer`` plugs this into the shared PEZ
engine (``pez_core.engine.search``): the soft prompt moves among the LM's input embeddings, and

    gain = -(cross-entropy of the labels at the answer position, on a batch of training examples)
           - fluency * (the LM's own negative log-likelihood of the prompt tokens, in context)

With tied input/output embeddings (GPT-2), each prompt token's own logit in the fluency term is written
as context · prompt row, so the straight-through gradient also pulls the token itself towards what the LM
expects there (same value; through the context alone the last prompt token would get no fluency gradient).

The prompt returned is the best *string*: every restart's best prompt is decoded, put into the template,
re-tokenized and scored by validation accuracy (training accuracy without a validation set). In the
``PezResult`` the engine returns, ``similarity`` is that accuracy.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..common.errors import PezError
from ..engine.config import MAX_PROMPT_LEN, PezConfig, PezResult
from ..engine.loop import search
from ..engine.scorer import Scorer, activation_bytes
from .data import Example, parse_verbalizer
from .model import LanguageModel, lm_allowed_ids

log = logging.getLogger(__name__)

DEFAULT_BATCH = 16                    # training examples per step (the paper's batch)
DEFAULT_PROMPT_LEN = 10               # the paper's LM prompts
EVAL_BATCH = 64                       # sequences per forward when scoring strings
BATCH_CYCLE = 64                      # seeded epochs of training batches, laid out on the device once
TIE_BREAK = 1e-3                      # strings with equal accuracy: the lower loss wins, by less than one example


class Template:
    """``"{input} {prompt} it was"``: where the input and the prompt go; the answer is the next token.

    The whitespace before ``{prompt}`` belongs to the prompt: with no prompt it is dropped, so the template
    alone reads ``"<input> it was"``."""

    def __init__(self, template: str):
        for slot in ("{input}", "{prompt}"):
            if template.count(slot) != 1:
                raise PezError(f"the template must hold {slot} exactly once, got {template!r} "
                               "(e.g. '{input} {prompt} It was')")
        self.text = template.strip()
        self.before, self.after = self.text.split("{prompt}")

    def parts(self, text: str) -> tuple[str, str, str]:
        """(head, whitespace before the prompt, tail) for one input."""
        before, after = (part.replace("{input}", text.strip()) for part in (self.before, self.after))
        head = before.rstrip()
        return head, before[len(head):], after.rstrip()

    def fill(self, text: str, prompt: str) -> str:
        head, space, tail = self.parts(text)
        return (head + space + prompt + tail if prompt else head + tail).strip()


@dataclass
class PromptScore:
    """How a prompt string does on a set of examples, as the LM reads the filled template."""
    accuracy: float
    loss: float                   # mean cross-entropy of the labels
    perplexity: float | None      # of the prompt tokens in context; None for an empty prompt
    nll: float | None


class Verbalizer:
    """Labels and the first token of each of their words (with a leading space: the word follows the template)."""

    def __init__(self, lm: LanguageModel, spec):
        self.words = parse_verbalizer(spec)
        self.labels = list(self.words)
        token_ids, owners = [], []
        for c, (label, words) in enumerate(self.words.items()):
            for word in words:
                ids = lm.encode(" " + word)
                if len(ids) > 1:
                    log.info("verbalizer word %r is %d tokens; its first token stands for it", word, len(ids))
                token_ids.append(ids[0])
                owners.append(c)
        if len(set(token_ids)) < len(token_ids):
            raise PezError(f"two verbalizer words share their first token in {lm.name}; choose distinct words")
        self.token_ids = torch.tensor(token_ids, device=lm.device)
        labels = torch.arange(len(self.labels), device=lm.device)
        self.member = torch.tensor(owners, device=lm.device)[None, :] == labels[:, None]  # (C, words)

    def label_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., C) log-sum-exp over each label's word logits, from next-token logits (..., V)."""
        words = logits[..., self.token_ids]
        return torch.logsumexp(words[..., None, :].masked_fill(~self.member, -math.inf), dim=-1)

    def targets(self, examples: Sequence[Example]) -> torch.Tensor:
        return torch.tensor([self.labels.index(e.label) for e in examples], device=self.member.device)


def _string_sequences(lm: LanguageModel, template: Template, examples: Sequence[Example],
                      prompts: Sequence[str]) -> list[tuple[list[int], range]]:
    """Per prompt, per example: the ids a user's tools read for the filled template (start token first), and
    where the prompt sits — between the head's and the tail's own tokens."""
    parts = [template.parts(e.text) for e in examples]
    edges = lm.encode_many([head.lstrip() for head, _, _ in parts] + [tail for _, _, tail in parts])
    heads, tails = edges[:len(parts)], edges[len(parts):]
    filled = lm.encode_many([template.fill(e.text, prompt) for prompt in prompts for e in examples])
    sequences = []
    for i, ids in enumerate(filled):
        prompt, e = prompts[i // len(examples)], i % len(examples)
        ids = [lm.start_id] + ids
        sequences.append((ids, range(1 + len(heads[e]), len(ids) - len(tails[e])) if prompt else range(0)))
    return sequences


def evaluate_prompt(lm: LanguageModel, template: str | Template, verbalizer, examples: Sequence[Example],
                    prompt: str) -> PromptScore:
    """Accuracy, label loss and prompt perplexity of one prompt string (``""``: the template alone)."""
    return evaluate_prompts(lm, template, verbalizer, examples, [prompt])[0]


@torch.no_grad()
def evaluate_prompts(lm: LanguageModel, template: str | Template, verbalizer, examples: Sequence[Example],
                     prompts: Sequence[str]) -> list[PromptScore]:
    """``evaluate_prompt`` of each prompt; one tokenizer call fills all the templates (polishing scores
    dozens of candidates at once), and the sequences share batches of ``EVAL_BATCH``."""
    template = template if isinstance(template, Template) else Template(template)
    verbalizer = verbalizer if isinstance(verbalizer, Verbalizer) else Verbalizer(lm, verbalizer)
    if not examples:
        raise PezError("no examples to evaluate the prompt on")
    sequences = _string_sequences(lm, template, examples, prompts)
    for i, (ids, _) in enumerate(sequences):
        lm.check_length(len(ids), f"example {examples[i % len(examples)].text[:60]!r}")
    targets = verbalizer.targets(examples).repeat(len(prompts))
    owner = torch.arange(len(prompts), device=lm.device).repeat_interleave(len(examples))
    correct, loss, nll, counted = (torch.zeros(len(prompts), device=lm.device) for _ in range(4))
    for first in range(0, len(sequences), EVAL_BATCH):
        chunk = sequences[first:first + EVAL_BATCH]
        hidden = _hidden_of_ids(lm, [ids for ids, _ in chunk])
        ends = torch.tensor([len(ids) - 1 for ids, _ in chunk], device=lm.device)
        scores = verbalizer.label_scores(lm.logits(hidden[torch.arange(len(chunk)), ends]))
        target, who = targets[first:first + len(chunk)], owner[first:first + len(chunk)]
        correct.index_add_(0, who, (scores.argmax(-1) == target).float())
        loss.index_add_(0, who, F.cross_entropy(scores, target, reduction="none"))
        rows = [(r, p) for r, (_, span) in enumerate(chunk) for p in span]
        if rows:
            row, pos = (torch.tensor(x, device=lm.device) for x in zip(*rows))
            wanted = torch.tensor([chunk[r][0][p] for r, p in rows], device=lm.device)
            token_nll = F.cross_entropy(lm.logits(hidden[row, pos - 1]), wanted, reduction="none")
            nll.index_add_(0, who[row], token_nll)
            counted.index_add_(0, who[row], torch.ones_like(token_nll))
    results = []
    for c, l, n, k in zip(correct.tolist(), loss.tolist(), nll.tolist(), counted.tolist()):
        mean_nll = n / k if k else None
        results.append(PromptScore(c / len(examples), l / len(examples),
                                   math.exp(mean_nll) if mean_nll is not None else None, mean_nll))
    return results


def _hidden_of_ids(lm: LanguageModel, sequences: list[list[int]]) -> torch.Tensor:
    """Last hidden states of right-padded sequences (the causal mask keeps padding out of every real position)."""
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), lm.start_id, device=lm.device)
    for r, seq in enumerate(sequences):
        ids[r, :len(seq)] = torch.tensor(seq, device=lm.device)
    return lm.hidden(lm.model.get_input_embeddings()(ids))


@dataclass
class _Layout:
    """Every training example laid out once on the device for prompts of one length, right-padded:
    token ids, which positions hold the prompt (and which of its tokens), where the answer is read; and
    the seeded order of training batches. A step only indexes these, so it can be replayed as a CUDA graph."""
    prompt_len: int
    ids: torch.Tensor          # (E, T)
    slot: torch.Tensor         # (E, T) prompt token index at prompt positions, 0 elsewhere
    is_prompt: torch.Tensor    # (E, T)
    prompt_start: torch.Tensor  # (E,)
    answer: torch.Tensor       # (E,)
    targets: torch.Tensor      # (E,)
    order: torch.Tensor        # (batches, B) example rows of each step's batch
    calls: torch.Tensor        # () batches used so far


class LmScorer(Scorer):
    """PEZ against one causal LM on a classification task (see the module docstring for the gain).

    ``gains`` reports the training-batch accuracy as its similarity; ``score_texts`` scores strings by
    validation accuracy (training accuracy without ``valid``), ties going to the lower loss."""
    max_prompt_len = MAX_PROMPT_LEN
    prompt_len_note = "the longest prompt the PEZ engine learns"

    def __init__(self, lm: LanguageModel, template: str | Template, verbalizer, train: Sequence[Example],
                 valid: Sequence[Example] | None = None, fluency: float = 0.0, batch_size: int = DEFAULT_BATCH,
                 vocab: str = "words", blocklist=None, allowlist=None, seed: int = 0):
        if not (isinstance(fluency, (int, float)) and math.isfinite(fluency) and fluency >= 0):
            raise PezError(f"fluency weight must be zero or positive, got {fluency!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise PezError(f"batch size must be a positive integer, got {batch_size!r}")
        lm.model.requires_grad_(False)  # only the prompt moves
        self.lm, self.device, self.problems = lm, lm.device, 1
        self.template = template if isinstance(template, Template) else Template(template)
        self.verbalizer = verbalizer if isinstance(verbalizer, Verbalizer) else Verbalizer(lm, verbalizer)
        self.train, self.valid = list(train), list(valid or [])
        for name, rows in (("training", self.train), ("validation", self.valid)):
            unknown = sorted({e.label for e in rows} - set(self.verbalizer.labels))
            if unknown:
                raise PezError(f"{name} labels {unknown} are not in the verbalizer "
                               f"({', '.join(self.verbalizer.labels)})")
        if not self.train:
            raise PezError("no training examples")
        self.fluency, self.batch_size, self.seed = float(fluency), min(batch_size, len(self.train)), seed
        # a step runs one training batch forward and backward (about three forwards); a string is scored forward
        # on every validation (or training) example
        self.strings_per_step_prompt = 3 * self.batch_size / len(self.valid or self.train)
        self.allowed = lm_allowed_ids(lm.tokenizer, vocab, blocklist, allowlist).to(self.device)
        self._layout: _Layout | None = None
        self._keys: torch.Tensor | None = None

    @property
    def table(self) -> torch.Tensor:
        return self.lm.model.get_input_embeddings().weight

    @property
    def prompt_space(self) -> str:
        """The template's whitespace before ``{prompt}``: a prompt is tokenized as it reads there."""
        return self.template.before[len(self.template.before.rstrip()):]

    def layout(self, prompt_len: int) -> _Layout:
        if self._layout is None or self._layout.prompt_len != prompt_len:
            self._layout = self._lay_out(prompt_len)
        return self._layout

    def _lay_out(self, L: int) -> _Layout:
        pieces = []
        for example in self.train:
            head, _, tail = self.template.parts(example.text)
            pieces.append(([self.lm.start_id] + self.lm.encode(head.lstrip()), self.lm.encode(tail)))
        E, T = len(pieces), max(len(h) + L + len(t) for h, t in pieces)
        longest = max(range(E), key=lambda r: len(pieces[r][0]) + len(pieces[r][1]))
        self.lm.check_length(T, f"training example {self.train[longest].text[:60]!r}")
        ids = torch.full((E, T), self.lm.start_id)
        slot = torch.zeros((E, T), dtype=torch.long)
        for r, (head, tail) in enumerate(pieces):
            ids[r, :len(head)] = torch.tensor(head)
            slot[r, len(head):len(head) + L] = torch.arange(L) + 1  # 0 marks "not the prompt"
            ids[r, len(head) + L:len(head) + L + len(tail)] = torch.tensor(tail, dtype=torch.long)
        rng = np.random.default_rng(self.seed)  # all 64 bits of the seed count (torch's CPU generator keeps 32)
        order = torch.from_numpy(np.concatenate([rng.permutation(E) for _ in range(BATCH_CYCLE)]))
        batches = len(order) // self.batch_size
        order = order[:batches * self.batch_size].view(batches, self.batch_size)
        heads = torch.tensor([len(h) for h, _ in pieces])
        answer = heads + L + torch.tensor([len(t) for _, t in pieces]) - 1
        d = self.device
        return _Layout(L, ids.to(d), (slot - 1).clamp(min=0).to(d), (slot > 0).to(d), heads.to(d), answer.to(d),
                       self.verbalizer.targets(self.train), order.to(d), torch.zeros((), dtype=torch.long, device=d))

    def gains(self, prompts: torch.Tensor, problems: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(−label loss − fluency × prompt NLL, batch accuracy), each (N,), of prompt embeddings (N, L, D),
        on the next training batch (all steps' batches are fixed by the seed)."""
        lay = self.layout(prompts.shape[1])
        rows = lay.order.index_select(0, (lay.calls % len(lay.order)).view(1))[0]
        with torch.no_grad():
            lay.calls += 1
        N, B = prompts.shape[0], rows.shape[0]
        ids, mask = lay.ids[rows], lay.is_prompt[rows]
        embeds = torch.where(mask[None, :, :, None], prompts[:, lay.slot[rows]], self.table[ids].to(prompts.dtype))
        hidden = self.lm.hidden(embeds.flatten(0, 1)).view(N, B, ids.shape[1], -1)
        answer = hidden[:, torch.arange(B, device=self.device), lay.answer[rows]]  # (N, B, D)
        scores = self.verbalizer.label_scores(self.lm.logits(answer))
        target = lay.targets[rows]
        loss = F.cross_entropy(scores.flatten(0, 1), target.repeat(N), reduction="none").view(N, B).mean(1)
        accuracy = (scores.argmax(-1) == target).float().mean(1)
        gain = -loss
        if self.fluency > 0:
            gain = gain - self.fluency * self._prompt_nll(prompts, hidden, lay.prompt_start[rows])
        return gain, accuracy

    def _prompt_nll(self, prompts: torch.Tensor, hidden: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """(N,) mean NLL of each prompt's tokens, each predicted from what precedes it in the template."""
        N, B, L = hidden.shape[0], hidden.shape[1], prompts.shape[1]
        before = start[:, None] - 1 + torch.arange(L, device=self.device)  # >= 0: sequences open with a start token
        context = hidden[:, torch.arange(B, device=self.device)[:, None], before]  # (N, B, L, D)
        logits = self.lm.logits(context)  # (N, B, L, V)
        if self.tied:
            # the token's own logit is context · its (tied) embedding: written with the prompt row, it has the
            # same value and also pulls each prompt token towards what the LM expects there
            own = (context.float() * prompts[:, None]).sum(-1)
            return (torch.logsumexp(logits, dim=-1) - own).view(N, B * L).mean(1)
        wanted = self.token_ids_of(prompts)[:, None, :].expand(N, B, L)
        return F.cross_entropy(logits.flatten(0, 2), wanted.flatten(), reduction="none").view(N, B * L).mean(1)

    @property
    def tied(self) -> bool:
        """Whether the output head is the input embedding table itself (GPT-2 and most causal LMs)."""
        head = self.lm.model.get_output_embeddings()
        return (head is not None and getattr(head, "bias", None) is None
                and head.weight.data_ptr() == self.table.data_ptr() and head.weight.shape == self.table.shape)

    @torch.no_grad()
    def token_ids_of(self, prompts: torch.Tensor) -> torch.Tensor:
        """(N, L) the ids of hard prompt embeddings: each position holds exactly one allowed row."""
        if self._keys is None:
            self._keys = self.table[self.allowed].float()
            self._half_norms = 0.5 * (self._keys ** 2).sum(-1)
        nearest = (prompts.detach().flatten(0, 1).float() @ self._keys.T - self._half_norms).argmax(-1)
        return self.allowed[nearest].view(prompts.shape[:2])

    def score_texts(self, texts: Sequence[str], problems: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        examples = self.valid or self.train
        scores = evaluate_prompts(self.lm, self.template, self.verbalizer, examples, texts)
        accuracy = torch.tensor([s.accuracy for s in scores])
        loss = torch.tensor([s.loss + self.fluency * (s.nll or 0.0) for s in scores])
        return accuracy - TIE_BREAK * loss / (1 + loss), accuracy

    def bytes_per_prompt(self, prompt_len: int) -> int:
        """A step's backward for one prompt in every sequence of a training batch, logits included."""
        lay, cfg = self.layout(prompt_len), self.lm.model.config
        width, layers = self.table.shape[1], getattr(cfg, "num_hidden_layers", 12)
        return self.batch_size * (activation_bytes(lay.ids.shape[1], width, layers, self.lm.model.dtype.itemsize)
                                  + (prompt_len + 1) * self.table.shape[0] * 12)

    def decode(self, ids: Sequence[int]) -> str:
        return self.lm.tokenizer.decode(list(ids)).strip()

    def tokenize(self, text: str) -> list[int]:
        return self.lm.encode(self.prompt_space + text) if text else []


def learn_prompt(lm: LanguageModel, template: str, verbalizer, train: Sequence[Example],
                 valid: Sequence[Example] | None = None, config: PezConfig | None = None, fluency: float = 0.0,
                 batch_size: int = DEFAULT_BATCH, callback=None) -> PezResult:
    """The best hard prompt string for a classification task; ``similarity`` in the result is its validation
    accuracy (training accuracy without ``valid``). Projection, restarts, best tracking and stopping rules
    are the PEZ engine's."""
    config = config or PezConfig(prompt_len=DEFAULT_PROMPT_LEN)
    config.validate(LmScorer)
    scorer = LmScorer(lm, template, verbalizer, train, valid, fluency, batch_size, config.vocab, config.blocklist,
                      config.allowlist, config.seed)
    return search(scorer, config, callback)[0]


def prompt_report(lm: LanguageModel, template: str, verbalizer, examples: Sequence[Example], prompt: str) -> dict:
    """What the CLI and the benchmark print of a prompt on one LM: accuracy with it, with the template
    alone, and the prompt's perplexity in context."""
    with_prompt = evaluate_prompt(lm, template, verbalizer, examples, prompt)
    alone = evaluate_prompt(lm, template, verbalizer, examples, "")
    return {"lm": lm.name, "valid_accuracy": with_prompt.accuracy, "template_accuracy": alone.accuracy,
            "perplexity": with_prompt.perplexity}
