"""Measure how many PEZ prompt tokens are junk (not shapes-world words) for a trained shapes CLIP.

A minimal PEZ (Wen et al. 2023) loop, independent of pez_core, used to choose training options:

    .venv/bin/python -m training.pez_junk_check pez_core/demo/bundled/shapes-demo --images 8 --steps 300
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import open_clip  # noqa: E402
from open_clip.tokenizer import SimpleTokenizer  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from pez_core.demo import shapes  # noqa: E402
from training.train_shapes_clip import EOT, SOT, WORLD_IDS, preprocess  # noqa: E402


def load(stem: Path) -> open_clip.CLIP:
    model = open_clip.CLIP(**json.loads(stem.with_suffix(".json").read_text()))
    model.load_state_dict(load_file(str(stem.with_suffix(".safetensors"))))
    return model.float().eval().requires_grad_(False)


def encode_embeds(model: open_clip.CLIP, embeds: torch.Tensor) -> torch.Tensor:
    """Text features for [SOT] + embeds + [EOT] (batch 1); pooled at EOT like encode_text."""
    tok = model.token_embedding.weight
    x = torch.cat([tok[SOT][None], embeds, tok[EOT][None]])[None]
    n = x.shape[1]
    x = model.ln_final(model.transformer(x + model.positional_embedding[:n], attn_mask=model.attn_mask[:n, :n]))
    return x[0, -1] @ model.text_projection


def pez(model: open_clip.CLIP, target: torch.Tensor, length: int, steps: int, seed: int) -> list[int]:
    """Projected-gradient prompt search: optimise soft embeddings, forward/backward through nearest tokens."""
    torch.manual_seed(seed)
    vocab = model.token_embedding.weight[:SOT]
    vocab_n = F.normalize(vocab, dim=-1)
    soft = vocab[torch.randint(len(vocab), (length,))].clone().requires_grad_(True)
    opt = torch.optim.AdamW([soft], lr=0.1, weight_decay=0.1)
    best, best_ids = -2.0, []
    for _ in range(steps):
        ids = (F.normalize(soft, dim=-1) @ vocab_n.T).argmax(-1)
        hard = vocab[ids]
        proj = soft + (hard - soft).detach()  # forward with hard tokens, gradient to the soft ones
        sim = F.cosine_similarity(encode_embeds(model, proj), target, dim=0)
        if sim.item() > best:
            best, best_ids = sim.item(), ids.tolist()
        opt.zero_grad()
        (1 - sim).backward()
        opt.step()
    return best_ids


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("stem", type=Path, help="path without suffix to <stem>.json / <stem>.safetensors")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--length", type=int, default=8)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=4242)
    a = p.parse_args()
    torch.set_num_threads(1)
    model, tok = load(a.stem), SimpleTokenizer()
    images, scenes = shapes.sample(a.seed, a.images, n_objects=1)
    with torch.no_grad():
        feats = model.encode_image(preprocess(images))
    world, junk, hits = set(WORLD_IDS), 0, 0
    for i, (f, s) in enumerate(zip(feats, scenes)):
        ids = pez(model, f, a.length, a.steps, a.seed + i)
        junk += sum(t not in world for t in ids)
        words = tok.decode(ids).split()
        hits += (s.objects[0].color in words) + (s.objects[0].shape in words)
        print(f"{s.objects[0].color} {s.objects[0].shape} on {s.background}: {tok.decode(ids)!r}", flush=True)
    n = a.images * a.length
    print(f"junk tokens {junk}/{n} = {junk / n:.0%}; colour+shape words found {hits}/{2 * a.images}")


if __name__ == "__main__":
    main()
