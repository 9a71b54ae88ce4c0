"""``PezModel``: a frozen OpenCLIP with the few operations PEZ needs (what open_clip keeps in ``model.py``).

The text tower encodes token embeddings (the search's soft prompts), ids and strings; texts sharing leading
tokens run only their tails. The vision tower encodes target images.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from ..common.errors import ModelLoadError, PezError
from ..common.limits import check_interrupt
from .images import preprocess
from .tokenizer import clip_tokenizer

log = logging.getLogger(__name__)

MAX_PROMPT_TOKENS = 75  # CLIP's 77 positions minus start and end of text
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TEXT_BATCH = 256  # texts encoded at once: scoring thousands of candidate prompts stays within memory
# images encoded at once; fewer on the CPU, where Cancel is checked between them (8 encode as fast as 32
# there: random ViT-B-32, 1 thread, 111 against 110 ms an image)
IMAGE_BATCH, CPU_IMAGE_BATCH = 32, 8
SHARED_STARTS = True  # texts sharing leading tokens run only their tails (False: the whole tower, to compare)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision not in PRECISIONS:
        raise PezError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        # bf16 needs Ampere or newer; torch also reports True for older GPUs, where it is only emulated (slow)
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]



class PezModel:
    """A frozen CLIP with the few operations PEZ needs.

    The text tower runs on ``device`` in ``dtype``; the vision tower is only used
    to compute target features and waits on the CPU between uses on a GPU.
    """

    def __init__(self, clip, name: str, device: torch.device, dtype: torch.dtype):
        if getattr(clip, "text_pool_type", "argmax") != "argmax" or getattr(clip, "attn_mask", None) is None:
            raise ModelLoadError(f"{name}: PEZ needs a causal CLIP text tower pooled at the end-of-text token")
        self.clip = clip.eval().requires_grad_(False)
        self.name, self.device, self.dtype = name, device, dtype
        self.context_length = clip.positional_embedding.shape[0]
        self.tokenizer = clip_tokenizer(self.context_length)
        vocab_rows = clip.token_embedding.weight.shape[0]
        if vocab_rows != len(self.tokenizer.decoder):
            raise ModelLoadError(f"{name}: its text tower has {vocab_rows} token rows, but the CLIP BPE "
                                 f"tokenizer has {len(self.tokenizer.decoder)}; only CLIP-BPE models are supported")
        self.sot_id, self.eot_id = self.tokenizer.sot_token_id, self.tokenizer.eot_token_id
        cfg = clip.visual.preprocess_cfg if hasattr(clip.visual, "preprocess_cfg") else {}
        size = cfg.get("size", getattr(clip.visual, "image_size", 224))
        self.image_size = size if isinstance(size, int) else size[0]
        self.image_mean = tuple(cfg.get("mean", getattr(clip.visual, "image_mean", None) or OPENAI_DATASET_MEAN))
        self.image_std = tuple(cfg.get("std", getattr(clip.visual, "image_std", None) or OPENAI_DATASET_STD))
        clip.to(dtype)
        self._place_text_tower(device)
        self._vision_device = torch.device("cpu") if device.type == "cuda" else device
        clip.visual.to(self._vision_device)

    def _place_text_tower(self, device: torch.device) -> None:
        clip = self.clip
        clip.transformer.to(device), clip.token_embedding.to(device), clip.ln_final.to(device)
        clip.positional_embedding.data = clip.positional_embedding.data.to(device)
        clip.attn_mask = clip.attn_mask.to(device)
        if isinstance(clip.text_projection, torch.nn.Parameter):
            clip.text_projection.data = clip.text_projection.data.to(device)
        elif clip.text_projection is not None:
            clip.text_projection.to(device)
        self._text_device = device

    def offload(self, device: str | torch.device = "cpu") -> None:
        """Park the text tower on ``device`` (frees the GPU between runs); the next use moves it back."""
        device = torch.device(device)
        if device != self._text_device:
            self._place_text_tower(device)
            log.debug("%s: text tower parked on %s", self.name, device)

    def __repr__(self) -> str:
        return f"PezModel({self.name!r}, device={self.device}, dtype={self.dtype})"

    @property
    def token_embeddings(self) -> torch.Tensor:
        """The token table, on ``device``; every text path starts here, so it brings back an offloaded tower."""
        if self._text_device != self.device:
            self._place_text_tower(self.device)
        return self.clip.token_embedding.weight

    @property
    def text_width(self) -> int:
        return self.clip.token_embedding.weight.shape[1]

    @property
    def text_layers(self) -> int:
        return len(self.clip.transformer.resblocks)

    # --- text -----------------------------------------------------------------
    def encode_embeddings(self, prompt: torch.Tensor) -> torch.Tensor:
        """Normalised text features of ``[SOT] + prompt + [EOT]`` for prompt embeddings (B, L, d).

        Attention is causal and the feature is read at EOT, so the sequence is cut right after
        EOT (L+2 positions instead of 77): exactly ``encode_text`` on the padded ids, for less work.
        """
        clip, n = self.clip, prompt.shape[1] + 2
        table = self.token_embeddings
        sot = table[self.sot_id].expand(prompt.shape[0], 1, -1)
        eot = table[self.eot_id].expand(prompt.shape[0], 1, -1)
        x = torch.cat([sot, prompt.to(table.dtype), eot], dim=1) + clip.positional_embedding[:n]
        x = clip.transformer(x, attn_mask=clip.attn_mask[:n, :n])
        return self._feature(x[:, -1])

    def encode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Normalised features of prompts given as token ids (B, L), without SOT/EOT."""
        return self.encode_embeddings(self.token_embeddings[ids.to(self.device)])

    def tokenize(self, text: str, name: str = "the text") -> list[int]:
        """BPE ids of ``text`` without SOT/EOT and without truncation (texts are bounded: ``pez_core.limits``)."""
        return self.tokenizer.encode(text, name)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids]).strip()

    def encode_texts(self, texts: Sequence[str], name: str = "text") -> torch.Tensor:
        """Normalised features (N, D) of texts; errors call them ``name`` (e.g. "negative text").

        A text longer than 75 tokens is not truncated: it is split into 75-token chunks
        and its feature is the normalised mean of the chunks' normalised features.
        """
        chunks, owner = [], []
        for i, text in enumerate(texts):
            label = f"{name} {i + 1}" if len(texts) > 1 else name
            ids = self.tokenize(text, label) if isinstance(text, str) else []
            if not ids:
                raise PezError(f"{label} is empty (or only whitespace or characters CLIP drops); give it some words")
            for start in range(0, len(ids), MAX_PROMPT_TOKENS):
                chunks.append(ids[start:start + MAX_PROMPT_TOKENS])
                owner.append(i)
        by_length: dict[int, list[int]] = {}
        for j, chunk in enumerate(chunks):
            by_length.setdefault(len(chunk), []).append(j)  # one batch per length: no padding needed
        feats: list = [None] * len(chunks)
        for same_length in by_length.values():
            for j, feat in zip(same_length, self._encode_same_length(torch.tensor([chunks[j] for j in same_length]))):
                feats[j] = feat
        owner_t = torch.tensor(owner, device=self.device)
        summed = torch.zeros(len(texts), feats[0].shape[0], device=self.device).index_add_(0, owner_t, torch.stack(feats))
        return F.normalize(summed, dim=-1)

    @torch.no_grad()
    def _encode_same_length(self, ids: torch.Tensor) -> torch.Tensor:
        """Features (N, D) of N prompts of one length (N, L), in batches of at most ``TEXT_BATCH``.

        Candidate prompts mostly differ from one prompt in a token or two. The *consensus* holds the most
        common token at each position; attention is causal, so the tokens a row shares with the consensus
        from its start have the same states in every such row. Those are computed once, and each batch
        runs only its rows' tails through the tower (``_encode_tails``).
        """
        ids = ids.cpu()  # the grouping is bookkeeping (and torch.mode is not on every backend)
        if not (SHARED_STARTS and self._tails_supported):
            feats = []
            for first in range(0, len(ids), TEXT_BATCH):
                check_interrupt()  # a long text is many batches: Cancel is seen between them
                feats.append(self.encode_ids(ids[first:first + TEXT_BATCH]))
            return torch.cat(feats)
        consensus = ids.mode(dim=0).values
        shared = (ids == consensus).int().cumprod(dim=1).sum(dim=1).tolist()  # leading tokens shared with it
        starts = self._prefix_states(consensus[:max(shared)].to(self.device))
        order = sorted(range(len(shared)), key=lambda r: -shared[r])  # a batch runs from its shortest start
        feats: list = [None] * len(order)
        for first in range(0, len(order), TEXT_BATCH):
            check_interrupt()
            rows = order[first:first + TEXT_BATCH]
            done = self._encode_tails(ids[torch.tensor(rows)].to(self.device), min(shared[r] for r in rows), starts)
            for r, feat in zip(rows, done):
                feats[r] = feat
        return torch.stack(feats)

    @property
    def _tails_supported(self) -> bool:
        """Whether the tower is made of open_clip's plain self-attention blocks, which ``_encode_tails``
        drives through their own layers (anything else takes the plain forward)."""
        from open_clip.transformer import ResidualAttentionBlock
        tower = self.clip.transformer
        return getattr(tower, "batch_first", False) and all(
            type(block) is ResidualAttentionBlock and not hasattr(block, "ln_1_kv") and block.attn.batch_first
            for block in tower.resblocks)

    def _prefix_states(self, prompt: torch.Tensor) -> list[torch.Tensor]:
        """The input of every block at the positions of ``[SOT] + prompt`` (L,): each (1, L + 1, d)."""
        clip, n = self.clip, prompt.shape[0] + 1
        x = self.token_embeddings[torch.cat([prompt.new_tensor([self.sot_id]), prompt])][None] + clip.positional_embedding[:n]
        states = []
        for block in clip.transformer.resblocks:
            states.append(x)
            x = block(x, attn_mask=clip.attn_mask[:n, :n])
        return states

    def _encode_tails(self, ids: torch.Tensor, shared: int, starts: list[torch.Tensor]) -> torch.Tensor:
        """Normalised features of prompts (B, L) whose first ``shared`` tokens are those of the prompt
        ``starts`` was computed from: only the later positions run through the tower, attending to the
        stored start as well, and the last block computes end-of-text alone (the feature is read there)."""
        clip, table = self.clip, self.token_embeddings
        held, n = shared + 1, ids.shape[1] + 2  # positions taken from ``starts`` (SOT and the shared tokens); all
        tail = torch.cat([ids[:, shared:], ids.new_full((ids.shape[0], 1), self.eot_id)], dim=1)
        x = table[tail] + clip.positional_embedding[held:n]
        blocks = clip.transformer.resblocks
        for i, block in enumerate(blocks):
            normed = block.ln_1(torch.cat([starts[i][:, :held].expand(x.shape[0], -1, -1), x], dim=1))
            query_from = held if i < len(blocks) - 1 else n - 1
            x = x[:, query_from - held:]
            x = x + block.ls_1(block.attention(q_x=normed[:, query_from:], k_x=normed, v_x=normed,
                                               attn_mask=clip.attn_mask[query_from:n, :n]))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        return self._feature(x[:, -1])

    def _feature(self, end_of_text: torch.Tensor) -> torch.Tensor:
        """The normalised text feature (B, D) from the tower's output at end-of-text (B, d)."""
        x = self.clip.ln_final(end_of_text)
        proj = self.clip.text_projection
        if proj is not None:  # open_clip's proj_type "none" has no projection
            x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
        return F.normalize(x.float(), dim=-1)

    # --- images ---------------------------------------------------------------
    def encode_images(self, images) -> torch.Tensor:
        """Normalised image features (N, D) for a list or batch of images (see ``pez_core.images``)."""
        pixels = preprocess(images, self.image_size, self.image_mean, self.image_std)
        visual = self.clip.visual.to(self.device)
        # Cancel is seen before every block too: one image takes seconds through ViT-L-14 on a CPU
        hooks = [block.register_forward_pre_hook(lambda *_: check_interrupt()) for block in _blocks(visual)]
        try:
            feats = []
            for batch in pixels.split(IMAGE_BATCH if self.device.type == "cuda" else CPU_IMAGE_BATCH):
                check_interrupt()
                feats.append(visual(batch.to(self.device, self.dtype)))
        finally:
            for hook in hooks:
                hook.remove()
            visual.to(self._vision_device)
        return F.normalize(torch.cat(feats).float(), dim=-1)


def _blocks(visual) -> list[torch.nn.Module]:
    """The blocks of a vision tower: a ViT's residual attention blocks or a ResNet's bottlenecks."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is not None:
        return list(blocks)
    return [block for name in ("layer1", "layer2", "layer3", "layer4") for block in getattr(visual, name, [])]
