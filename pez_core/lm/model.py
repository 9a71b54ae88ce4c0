"""A Hugging Face causal LM for PEZ: loading (offline unless allowed), its tokens, and which of them a prompt
may use. ``transformers`` is an optional extra: ``pip install "pez-hard-prompts[lm]"``; it is imported here only,
when a model is loaded."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch

from ..common.devices import hub_offline, resolve_device
from ..common.errors import ModelLoadError, PezError
from ..common.limits import check_text
from ..demo import BUNDLED_DIR
from ..engine.vocabulary import restrict_vocabulary

DEMO_LM = "tiny-lm"                   # trained by training/train_tiny_lm.py
DEMO_TRANSFER_LM = "tiny-lm-b"        # trained the same way, independently, with another tokenizer
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

    @property
    def positions(self) -> int | None:
        """The longest sequence the model reads (None: its config does not say)."""
        config = self.model.config
        return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)

    def check_length(self, length: int, what: str) -> None:
        """Refuse sequences longer than the model's positions, naming the one at fault."""
        limit = self.positions
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
    return BUNDLED_DIR / name


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
    offline = not allow_download or hub_offline()
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
    """Sorted ids a prompt may use (``restrict_vocabulary``). Modes: ``words`` (a space then letters: tokens that
    start a word), ``ascii`` (printable ASCII, perhaps after a space), ``full`` (all but special tokens). A word
    of a blocklist or allowlist counts both with and without a leading space."""
    def word_ids(words: list[str], name: str) -> set[int]:
        forms = [form for w in words for form in (check_text(w, name), " " + w)]
        return {i for form in forms for i in tokenizer(form, add_special_tokens=False)["input_ids"]}
    return restrict_vocabulary(mode, blocklist, allowlist, mode_ids=lambda m: _mode_ids(tokenizer, m),
                               word_ids=word_ids, special_ids=set(tokenizer.all_special_ids))
