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

``transformers`` is an optional extra: ``pip install "pez-hard-prompts[lm]"``.
"""
from __future__ import annotations

import logging
import math
import os
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .engine import PezConfig, PezResult, search
from .errors import ModelLoadError, PezError
from .lm_data import Example, parse_verbalizer
from .models import MAX_PROMPT_TOKENS, resolve_device
from .objective import free_memory
from .polish import POLISH_MODES
from .scorer import Scorer
from .vocab import VOCAB_MODES, parse_words

log = logging.getLogger(__name__)

BUNDLED_LMS = Path(__file__).resolve().parent / "bundled"
DEMO_LM = "tiny-lm"                   # trained by training/train_tiny_lm.py
DEMO_TRANSFER_LM = "tiny-lm-b"        # trained the same way, independently, with another tokenizer
DEMO_TEMPLATE = "{input} {prompt} it was"
DEMO_VERBALIZER = "positive:great,negative:terrible"
DEFAULT_BATCH = 16                    # training examples per step (the paper's batch)
DEFAULT_PROMPT_LEN = 10               # the paper's LM prompts
EVAL_BATCH = 64                       # sequences per forward when scoring strings
BATCH_CYCLE = 64                      # seeded epochs of training batches, laid out on the device once
TIE_BREAK = 1e-3                      # strings with equal accuracy: the lower loss wins, by less than one example
ACTIVATION_ELEMENTS = 24              # backward memory per position, width and layer (a generous bound)
INSTALL_HINT = 'language models need the transformers extra: pip install "pez-hard-prompts[lm]"'
_WORDS = re.compile(r" [A-Za-z]+")
_PRINTABLE = re.compile(r" ?[\x21-\x7e]+")


@dataclass
class LanguageModel:
    """A Hugging Face causal LM and its tokenizer, ready for PEZ (weights frozen)."""
    model: "torch.nn.Module"
    tokenizer: object
    name: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_length(self, length: int, what: str) -> None:
        """Refuse sequences longer than the model's positions, naming the one at fault."""
        config = self.model.config
        limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        if limit and length > limit:
            raise PezError(f"{what} is {length} tokens with the template and prompt; {self.name} reads at most "
                           f"{limit}: shorten the text, the template or --prompt-len")

    @property
    def start_id(self) -> int:
        """What every sequence starts with, so the first prompt token has something to be predicted from."""
        tok = self.tokenizer
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if start is None:
            raise PezError(f"{self.name}: the tokenizer has neither a BOS nor an EOS token to start sequences with")
        return start

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` of each text, in one tokenizer call (scoring candidates fills thousands of templates)."""
        filled = [t for t in texts if t]
        ids = iter(self.tokenizer(filled, add_special_tokens=False)["input_ids"] if filled else [])
        return [next(ids) if t else [] for t in texts]

    def hidden(self, embeds: torch.Tensor) -> torch.Tensor:
        """Last hidden states (B, T, D) of input embeddings (B, T, D), right padding needing no mask (causal)."""
        return self.model.base_model(inputs_embeds=embeds.to(self.model.dtype)).last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.get_output_embeddings()(hidden).float()


def bundled_lm(name: str = DEMO_LM) -> Path:
    return BUNDLED_LMS / name


def load_lm(name: str | Path, device: str = "auto", dtype: str = "float32",
            allow_download: bool = False) -> LanguageModel:
    """A causal LM by Hugging Face name or folder (``tiny-lm`` / ``tiny-lm-b``: the bundled demo models).

    Nothing is downloaded unless ``allow_download`` (and ``HF_HUB_OFFLINE`` is unset)."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise PezError(INSTALL_HINT) from e
    if dtype not in ("float32", "float16", "bfloat16"):
        raise PezError(f"unknown dtype {dtype!r}; choose float32, float16 or bfloat16")
    target = resolve_device(device)  # before the weights: a missing GPU is reported at once
    source, offline = _source(name, allow_download)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=offline, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as e:
        raise _load_error(name, source, offline, e) from e
    model = model.to(target).eval().requires_grad_(False)
    lm = LanguageModel(model, tokenizer, str(name))
    _check_logits(lm)
    return lm


def check_lm(name: str | Path, allow_download: bool = False) -> None:
    """Refuse a name or folder ``load_lm`` could not load, cheaply: its config only, no weights (the CLI
    checks ``--eval-lm`` before training, not after it)."""
    try:
        from transformers import AutoConfig
    except ImportError as e:
        raise PezError(INSTALL_HINT) from e
    source, offline = _source(name, allow_download)
    path = Path(source)
    if path.is_file():
        raise ModelLoadError(f"language model {str(name)!r} is a file; give the model's folder (config.json, "
                             "weights and tokenizer) or a Hugging Face name")
    if not path.exists() and (path.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1):
        # a Hugging Face name is "name" or "owner/name": this can only be a folder, and it is not there
        raise ModelLoadError(f"language model folder not found: {source}")
    try:
        AutoConfig.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError) as e:
        raise _load_error(name, source, offline, e) from e


def _source(name: str | Path, allow_download: bool) -> tuple[str, bool]:
    """What ``from_pretrained`` reads for ``name`` (a bundled demo LM by its short name), and whether offline."""
    bundled = bundled_lm(str(name))
    offline = not allow_download or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    return str(bundled if bundled.is_dir() else name), offline


def _load_error(name: str | Path, source: str, offline: bool, error: Exception) -> ModelLoadError:
    # downloads would not help a local folder
    hint = " (offline: give a local folder, or allow downloads)" if offline and not Path(source).is_dir() else ""
    return ModelLoadError(f"cannot load language model {str(name)!r}{hint}: {str(error).splitlines()[0]}")


@torch.no_grad()
def _check_logits(lm: LanguageModel) -> None:
    """Scoring reads logits only where needed (output head over the backbone); refuse models where that
    differs from the model's own logits (e.g. rescaled or soft-capped logits)."""
    ids = torch.tensor([[lm.start_id] + lm.encode("a test")], device=lm.device)
    full = lm.model(input_ids=ids).logits.float()
    ours = lm.logits(lm.hidden(lm.model.get_input_embeddings()(ids)))
    if not torch.allclose(full, ours, atol=1e-3, rtol=1e-3):
        raise ModelLoadError(f"{lm.name}: its logits are not its output head over its backbone; not supported")


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


def token_texts(tokenizer) -> list[str]:
    """The text of every token; SentencePiece's word-start marker becomes the leading space it stands for."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return [" " + text if str(piece).startswith("\u2581") and not text.startswith(" ") else text
            for piece, text in zip(pieces, texts)]


@lru_cache(maxsize=8)
def _mode_ids(tokenizer, mode: str) -> tuple[int, ...]:
    specials = set(tokenizer.all_special_ids)
    pattern = {"words": _WORDS, "ascii": _PRINTABLE}.get(mode)
    return tuple(i for i, text in enumerate(token_texts(tokenizer))
                 if i not in specials and (pattern is None or pattern.fullmatch(text)))


def lm_allowed_ids(tokenizer, mode: str = "words", blocklist=None, allowlist=None) -> torch.Tensor:
    """Sorted ids a prompt may use. Modes: ``words`` (a space then letters: tokens that start a word),
    ``ascii`` (printable ASCII, perhaps after a space), ``full`` (all but special tokens). A blocklist bans
    every token of its words, an allowlist (word bank) keeps only the tokens of its words, each both with
    and without a leading space."""
    if mode not in VOCAB_MODES:
        raise PezError(f"unknown vocabulary mode {mode!r}; choose one of {', '.join(VOCAB_MODES)}")
    specials = set(tokenizer.all_special_ids)

    def tokens(words):
        forms = [form for w in words for form in (w, " " + w)]
        return {i for form in forms for i in tokenizer(form, add_special_tokens=False)["input_ids"]}
    bank = parse_words(allowlist)
    allowed = (tokens(bank) - specials) if bank else set(_mode_ids(tokenizer, mode))
    allowed -= tokens(parse_words(blocklist))
    if not allowed:
        raise PezError("the vocabulary is empty: the blocklist bans every allowed token"
                       + (" of the allowlist" if bank else f" of mode {mode!r}")
                       + "; remove words from the blocklist or widen the vocabulary")
    return torch.tensor(sorted(allowed), dtype=torch.long)


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

    def prompts_that_fit(self, prompt_len: int) -> int:
        """How many prompts a step's backward can take at once in half the free memory (a generous estimate)."""
        lay, cfg = self.layout(prompt_len), self.lm.model.config
        width, layers = self.table.shape[1], getattr(cfg, "num_hidden_layers", 12)
        item = self.lm.model.dtype.itemsize
        per_prompt = self.batch_size * (lay.ids.shape[1] * width * layers * ACTIVATION_ELEMENTS * item
                                        + (prompt_len + 1) * self.table.shape[0] * 12)
        return max(1, free_memory(self.device) // 2 // per_prompt)

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
    _validate(config)
    scorer = LmScorer(lm, template, verbalizer, train, valid, fluency, batch_size, config.vocab, config.blocklist,
                      config.allowlist, config.seed)
    return search(scorer, config, callback)[0]


def _validate(config: PezConfig) -> None:
    """``config.validate()``, the prompt length first: the engine's message for it speaks of CLIP."""
    n = config.prompt_len
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_PROMPT_TOKENS:
        raise PezError(f"prompt length must be an integer from 1 to {MAX_PROMPT_TOKENS} (the longest prompt the "
                       f"PEZ engine learns), got {n!r}")
    config.validate()


def prompt_report(lm: LanguageModel, template: str, verbalizer, examples: Sequence[Example], prompt: str) -> dict:
    """What the CLI and the benchmark print of a prompt on one LM: accuracy with it, with the template
    alone, and the prompt's perplexity in context."""
    with_prompt = evaluate_prompt(lm, template, verbalizer, examples, prompt)
    alone = evaluate_prompt(lm, template, verbalizer, examples, "")
    return {"lm": lm.name, "valid_accuracy": with_prompt.accuracy, "template_accuracy": alone.accuracy,
            "perplexity": with_prompt.perplexity}


# ---- command line: ``python -m pez_core lm`` (the parser and the dispatch are in pez_core.cli) ----
DEMO_STEPS, DEMO_RESTARTS = 200, 4     # the demo's run: about a minute on one CPU core


def add_cli_arguments(sub) -> None:
    defaults = PezConfig()
    sub.add_argument("--demo", action="store_true", help=f"the bundled tiny LM and its task ({DEMO_LM}; "
                     f"transfer to {DEMO_TRANSFER_LM}); other options still apply")
    sub.add_argument("--lm", help="Hugging Face causal LM: name or local folder")
    sub.add_argument("--train", type=Path, help="training examples: .csv or .jsonl with text and label")
    sub.add_argument("--valid", type=Path, help="validation examples (chooses the best prompt string)")
    sub.add_argument("--template", help=f"where the input and the prompt go, e.g. {DEMO_TEMPLATE!r}")
    sub.add_argument("--verbalizer", help=f"label:word pairs, e.g. {DEMO_VERBALIZER!r} (word|word for several)")
    sub.add_argument("--prompt-len", type=int, default=DEFAULT_PROMPT_LEN, help="prompt tokens (default %(default)s)")
    sub.add_argument("--fluency", type=float, default=0.0, help="weight of the prompt's own NLL (default %(default)s)")
    sub.add_argument("--steps", type=int, help=f"optimisation steps (default {defaults.steps}; demo {DEMO_STEPS})")
    sub.add_argument("--restarts", type=int, help=f"parallel random starts (default: engine's; demo {DEMO_RESTARTS})")
    sub.add_argument("--seed", type=int, default=defaults.seed)
    sub.add_argument("--lr", type=float, default=defaults.lr, help="AdamW learning rate (default %(default)s)")
    sub.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="training examples per step")
    sub.add_argument("--shots", type=int, help="few-shot: train on this many examples per label "
                     "(default: every example)")
    sub.add_argument("--patience", type=int, help="stop after this many steps without improvement")
    sub.add_argument("--polish", default=defaults.polish, choices=POLISH_MODES,
                     help="after the PEZ loop: token swaps and/or pruning; never scores below PEZ's own prompt; "
                          "on a CPU it can take several times the loop (default %(default)s)")
    sub.add_argument("--time-budget", type=float, metavar="SECONDS",
                     help="end the whole run, polishing included, by then and return the best prompt")
    sub.add_argument("--vocab", default=defaults.vocab, choices=VOCAB_MODES)
    sub.add_argument("--blocklist", help="comma-separated words the prompt must not use")
    sub.add_argument("--allowlist", help="comma-separated word bank: the only words the prompt may use")
    sub.add_argument("--eval-lm", action="append", default=[],
                     help="also score the prompt on this LM (repeatable; checked before training)")
    sub.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    sub.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    sub.add_argument("--allow-download", action="store_true", help="let Hugging Face download missing models")
    sub.add_argument("--json", action="store_true", help="one JSON object on stdout")
    sub.add_argument("-v", "--verbose", action="store_true")


def _demo_defaults(args) -> None:
    if not args.demo:
        missing = [flag for flag, value in (("--lm", args.lm), ("--train", args.train), ("--template", args.template),
                                            ("--verbalizer", args.verbalizer)) if value is None]
        if missing:
            raise PezError(f"lm needs {', '.join(missing)} (or --demo for the bundled tiny LM)")
        return
    folder = bundled_lm(DEMO_LM)
    args.lm = args.lm or DEMO_LM
    args.train = args.train or folder / "sentiment-train.jsonl"
    args.valid = args.valid or folder / "sentiment-valid.jsonl"
    args.template, args.verbalizer = args.template or DEMO_TEMPLATE, args.verbalizer or DEMO_VERBALIZER
    # only when not given: 0 must reach validation and be refused, not become the default
    args.steps = DEMO_STEPS if args.steps is None else args.steps
    args.restarts = DEMO_RESTARTS if args.restarts is None else args.restarts
    args.eval_lm = args.eval_lm or [DEMO_TRANSFER_LM]


def run_cli(args, callback=None) -> dict:
    """The ``lm`` subcommand's result: the prompt, its accuracy and perplexity, and transfer to ``--eval-lm``
    (``{"lm", "error"}`` for an LM that failed: the learned prompt is kept all the same)."""
    from .lm_data import few_shot, load_examples

    _demo_defaults(args)
    labels = list(parse_verbalizer(args.verbalizer))
    if args.shots is not None and args.shots < 1:
        raise PezError(f"--shots must be at least 1 example per label, got {args.shots}; "
                       "omit it to train on every example")
    train = load_examples(args.train, labels)
    train = few_shot(train, args.shots, args.seed) if args.shots is not None else train
    valid = load_examples(args.valid, labels) if args.valid else None
    config = PezConfig(prompt_len=args.prompt_len, steps=PezConfig.steps if args.steps is None else args.steps,
                       restarts=args.restarts, seed=args.seed, lr=args.lr, vocab=args.vocab,
                       blocklist=args.blocklist, allowlist=args.allowlist, patience=args.patience,
                       polish=args.polish, time_budget=args.time_budget)
    _validate(config)
    for name in args.eval_lm:  # a typo must not cost a whole training run
        check_lm(name, args.allow_download)
    lm = load_lm(args.lm, args.device, args.dtype, args.allow_download)
    result = learn_prompt(lm, args.template, args.verbalizer, train, valid, config, args.fluency, args.batch_size,
                          callback)
    if hasattr(callback, "close"):
        callback.close()  # training is over: what loading and scoring the LMs print goes below the bar
    examples = valid or train
    report = prompt_report(lm, args.template, args.verbalizer, examples, result.prompt)
    transfer = []
    for name in args.eval_lm:
        try:
            transfer.append(prompt_report(load_lm(name, args.device, args.dtype, args.allow_download),
                                          args.template, args.verbalizer, examples, result.prompt))
        except Exception as e:  # anything (even out of memory): the prompt is learned and must still be reported
            log.debug("evaluation on %s failed", name, exc_info=True)
            transfer.append({"lm": str(name), "error": str(e) or type(e).__name__})
    return {"prompt": result.prompt, "token_ids": result.token_ids, **report,
            "scored_on": "valid" if valid else "train",
            "fluency": args.fluency, "steps": result.steps, "seconds": round(result.seconds, 2),
            "stopped_early": result.stopped_early, "polish": config.polish,
            "unpolished_prompt": result.unpolished_prompt, "transfer": transfer}


class _Progress:
    """tqdm on stderr: training-batch accuracy of the best prompt so far. The bar opens at the first step, so
    an error found before training is not printed after an empty bar."""

    def __init__(self, total: int):
        self.total, self.bar = total, None

    def __call__(self, progress) -> None:
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, file=sys.stderr, unit="step", dynamic_ncols=True)
        self.bar.update(progress.step - self.bar.n)
        self.bar.set_postfix_str(f"batch acc {progress.similarity:.2f} · {progress.prompt[:60]}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()  # ends its line: what is logged next starts on a line of its own
            self.bar = None


def main_cli(args) -> int:
    """Run ``lm`` and print its result (JSON with ``--json``); 2 on bad input, also when an ``--eval-lm``
    fails after training (the learned prompt is printed first)."""
    import json

    errors = logging.getLogger("pez_core")
    try:
        _demo_defaults(args)
        bar = _Progress(PezConfig.steps if args.steps is None else args.steps)
        try:
            row = run_cli(args, bar)
        finally:
            bar.close()  # before any error is logged
    except PezError as e:
        errors.error("%s", e)
        return 2
    failed = [t for t in row["transfer"] if "error" in t]
    if args.json:
        sys.stdout.write(json.dumps(row) + "\n")
    else:
        ppl = "-" if row["perplexity"] is None else f"{row['perplexity']:.1f}"
        sys.stdout.write(f"{row['prompt']}\t(accuracy {row['valid_accuracy']:.3f}, template alone "
                         f"{row['template_accuracy']:.3f}, perplexity {ppl})\n")
        for t in row["transfer"]:
            sys.stdout.write(f"  on {t['lm']}: not scored (the error follows)\n" if "error" in t else
                             f"  on {t['lm']}: accuracy {t['valid_accuracy']:.3f}, template alone "
                             f"{t['template_accuracy']:.3f}\n")
    for t in failed:
        errors.error("--eval-lm %s: %s", t["lm"], t["error"])
    return 2 if failed else 0
