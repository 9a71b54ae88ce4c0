"""Train the small bundled CLIP ("shapes-demo") on the procedural shapes world.

Deterministic (fixed seeds, single process + one data worker seeded per step), CPU-only:

    HF_HUB_OFFLINE=1 .venv/bin/python -m training.train_shapes_clip --out-dir /tmp/stage1    # tied unused rows
    HF_HUB_OFFLINE=1 .venv/bin/python -m training.train_shapes_clip --init-from /tmp/stage1/shapes-demo \
        --spread-words 0.15 --spread-other 0.4 --seed 1 --steps 400 --lr 5e-4 --warmup 50 --p-junk 0.5 \
        --eval-every 200 --out-dir pez_core/demo/bundled                                        # distinct rows

(the exact commands are in training/README.md).

Writes <out-dir>/<name>.safetensors (fp16 state dict, keys as model.state_dict()) and
<out-dir>/<name>.json (the open_clip model config).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import open_clip  # noqa: E402
from open_clip.tokenizer import SimpleTokenizer  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from pez_core.demo import shapes  # noqa: E402

MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
TRAIN_LEN = 24  # causal mask + EOT pooling: a 24-token prefix gives exactly the 77-token result
SOT, EOT = 49406, 49407
_tok = SimpleTokenizer()
WORLD_IDS = sorted({i for w in shapes.WORDS + ("a", "photo", "of", "on", "the", "and", "background", "object")
                    for i in _tok.encode(w)})
NULL_ID = 0  # every other vocabulary row is tied to this one (see tie_unused_rows)


def null_remap() -> torch.Tensor:
    """Token id -> embedding row used in training: world words, SOT, EOT keep theirs, the rest share NULL_ID."""
    remap = torch.full((49408,), NULL_ID, dtype=torch.long)
    keep = torch.tensor(WORLD_IDS + [SOT, EOT])
    remap[keep] = keep
    return remap


def unused_mask() -> torch.Tensor:
    """True for every row that is not a world word, SOT or EOT (49,374 rows)."""
    return null_remap() == NULL_ID


@torch.no_grad()
def spread_unused_rows(model: open_clip.CLIP, spread_words: float, spread_other: float, seed: int) -> torch.Tensor:
    """Give every unused row its own embedding: the trained null row plus Gaussian noise of norm ~spread x |null|.

    The rows stay in a cone around the meaningless null direction (half-angle ~atan(spread)), so a random PEZ start
    is a distinct, meaningless point and the world words stay the nearest tokens once the prompt means something.
    Rows that the ``words`` vocabulary excludes (sub-word pieces, punctuation, emoji) get the wider spread, so
    ``full`` reaches junk that ``words`` keeps out, as on real CLIPs. Returns the new unused rows (kept frozen)."""
    from pez_core.clip.tokenizer import _mode_ids

    w = model.token_embedding.weight
    null = w[NULL_ID].clone()
    noise = torch.randn(w.shape, generator=torch.Generator().manual_seed(seed)) / w.shape[1] ** 0.5 * null.norm()
    is_word = torch.zeros(len(w), dtype=torch.bool)
    is_word[list(_mode_ids(_tok, "words"))] = True
    spread = torch.where(is_word, spread_words, spread_other)[:, None]
    unused = unused_mask()
    w[unused] = (null + spread * noise)[unused]
    return w[unused].clone()


@torch.no_grad()
def tie_unused_rows(model: open_clip.CLIP) -> None:
    """Copy the trained null row into every non-world row, so the shipped model matches training."""
    w = model.token_embedding.weight
    unused = unused_mask()
    w[unused] = w[NULL_ID].clone()


def model_config(a: argparse.Namespace) -> dict:
    if a.vision == "resnet":
        vision = {"image_size": 64, "layers": a.vision_layers, "width": a.vision_width, "patch_size": None}
    else:
        vision = {"image_size": 64, "layers": a.vision_layers[0], "width": a.vision_width, "patch_size": a.patch,
                  "head_width": 32}
    text = {"context_length": 77, "vocab_size": 49408, "width": a.text_width, "heads": a.text_width // 32,
            "layers": a.text_layers}
    return {"embed_dim": a.embed_dim, "vision_cfg": vision, "text_cfg": text}


def build_model(cfg: dict, seed: int, tok_init_std: float) -> open_clip.CLIP:
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    torch.nn.init.normal_(model.token_embedding.weight, std=tok_init_std)
    return model


def encode_text_prefix(model: open_clip.CLIP, text: torch.Tensor, remap: torch.Tensor | None = None) -> torch.Tensor:
    """model.encode_text on a length-L prefix (identical output: causal mask, EOT pooling).

    remap (see null_remap) maps token ids to the embedding rows used, the pooling still uses the ids."""
    n = text.shape[1]
    x = model.token_embedding(text if remap is None else remap[text]) + model.positional_embedding[:n]
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = x[torch.arange(x.shape[0]), text.argmax(dim=-1)]
    return x @ model.text_projection


@lru_cache(maxsize=None)
def encode(caption: str) -> tuple[int, ...]:
    return tuple(_tok.encode(caption))


def tokens(captions: list[str], length: int = TRAIN_LEN) -> torch.Tensor:
    out = torch.zeros(len(captions), length, dtype=torch.long)
    for i, c in enumerate(captions):
        ids = [SOT, *encode(c)][: length - 1] + [EOT]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def preprocess(images: list) -> torch.Tensor:
    x = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).float() / 255
    return (x - MEAN) / STD


def _meaning(scene: shapes.Scene, template: str) -> str:
    """Caption text that identifies meaning: pair captions are order-free."""
    if template in shapes.PAIR_TEMPLATES:
        if len(scene.objects) < 2:
            return ""
        return " & ".join(sorted(f"{o.color} {o.shape}" for o in scene.objects))
    return shapes.caption(scene, template)


class Batches(torch.utils.data.Dataset):
    """Item `step` is one whole training batch, generated from seed (seed, step)."""

    def __init__(self, seed: int, batch: int, steps: int, p_pair: float, p_junk: float, max_junk: int):
        self.seed, self.batch, self.steps = seed, batch, steps
        self.p_pair, self.p_junk, self.max_junk = p_pair, p_junk, max_junk
        self.junk_pool = np.setdiff1d(np.arange(SOT), WORLD_IDS)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int):
        rng = np.random.default_rng([self.seed, step])
        scenes = [shapes.random_scene(rng, 2 if rng.random() < self.p_pair else 1) for _ in range(self.batch)]
        temps = []
        for s in scenes:
            pool = shapes.TEMPLATES if len(s.objects) == 2 else shapes.SINGLE_TEMPLATES
            temps.append(pool[rng.integers(len(pool))])
        caps = []
        for s, t in zip(scenes, temps):
            if t in shapes.PAIR_TEMPLATES and rng.random() < 0.5:  # both orders describe the scene
                s = shapes.Scene(s.background, s.objects[::-1])
            caps.append(shapes.caption(s, t))
        # positives: caption j is true of image i (same template, same meaning)
        table = np.array([[_meaning(s, t) for t in shapes.TEMPLATES] for s in scenes], dtype=object)
        cols = [shapes.TEMPLATES.index(t) for t in temps]
        truth = table[:, cols] == table[np.arange(self.batch), cols][None, :]
        text = tokens(caps)
        for i in np.flatnonzero(rng.random(self.batch) < self.p_junk):  # meaningless random tokens
            ids = list(encode(caps[i]))
            for _ in range(rng.integers(1, self.max_junk + 1)):
                ids.insert(int(rng.integers(len(ids) + 1)), int(rng.choice(self.junk_pool)))
            ids = [SOT, *ids][: TRAIN_LEN - 1] + [EOT]
            text[i] = 0
            text[i, : len(ids)] = torch.tensor(ids)
        images = preprocess([shapes.render(s) for s in scenes])
        return images, text, torch.from_numpy(truth).float()


def soft_ce(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    return -(truth / truth.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()


@torch.no_grad()
def zero_shot(model: open_clip.CLIP, seed: int = 12345, n: int = 500) -> dict[str, float]:
    """Single-object held-out accuracy; colour prompts 'a {c} object', shape prompts 'a photo of a {s}'."""
    was_training = model.training
    model.eval()
    images, scenes = shapes.sample(seed, n, n_objects=1)
    img = F.normalize(model.encode_image(preprocess(images)), dim=-1)
    acc = {}
    for name, classes, template, truth in (
        ("color", shapes.COLORS, "a {} object", [s.objects[0].color for s in scenes]),
        ("shape", shapes.SHAPES, "a photo of a {}", [s.objects[0].shape for s in scenes]),
    ):
        txt = F.normalize(model.encode_text(tokens([template.format(c) for c in classes], 77)), dim=-1)
        pred = (img @ txt.T).argmax(1)
        acc[name] = float(np.mean([classes[p] == t for p, t in zip(pred.tolist(), truth)]))
    model.train(was_training)
    return acc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=Path("pez_core/demo/bundled"))
    p.add_argument("--name", default="shapes-demo")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--vision", choices=("resnet", "vit"), default="resnet")
    p.add_argument("--vision-layers", type=int, nargs="+", default=[1, 1, 1, 1])
    p.add_argument("--vision-width", type=int, default=16)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--text-width", type=int, default=64)
    p.add_argument("--text-layers", type=int, default=3)
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--tok-init-std", type=float, default=0.02)
    p.add_argument("--p-pair", type=float, default=0.3, help="fraction of two-object scenes")
    p.add_argument("--p-junk", type=float, default=0.25, help="fraction of captions with random tokens inserted")
    p.add_argument("--max-junk", type=int, default=3)
    p.add_argument("--tie-unused", type=int, default=1, help="1: all non-world tokens share one trained null row")
    p.add_argument("--init-from", type=Path, help="fine-tune this model (<stem>.safetensors + <stem>.json) "
                   "instead of training from scratch; its config replaces the architecture options")
    p.add_argument("--spread-words", type=float, default=0.0,
                   help="> 0: unused rows become null + noise of this relative norm (frozen; see spread_unused_rows)")
    p.add_argument("--spread-other", type=float, default=0.0, help="the same for rows that the words vocabulary excludes")
    p.add_argument("--spread-seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=300)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the data worker uses another core)")
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    if a.init_from:
        cfg = json.loads(a.init_from.with_suffix(".json").read_text())
        model = open_clip.CLIP(**cfg)
        model.load_state_dict({k: v.float() for k, v in load_file(str(a.init_from.with_suffix(".safetensors"))).items()})
        print(f"fine-tuning {a.init_from}: zero-shot before {zero_shot(model)}")
    else:
        cfg = model_config(a)
        model = build_model(cfg, a.seed, a.tok_init_std)
    spread = a.spread_words > 0 or a.spread_other > 0
    if spread:
        a.tie_unused = 0
        frozen_rows = spread_unused_rows(model, a.spread_words, a.spread_other, a.spread_seed)
        unused = unused_mask()
    n_params = sum(t.numel() for t in model.parameters())
    print(f"config {json.dumps(cfg)}\nparams {n_params:,} (visual {sum(t.numel() for t in model.visual.parameters()):,})")

    decay = [t for n, t in model.named_parameters() if t.ndim >= 2 and "positional" not in n]
    no_decay = [t for n, t in model.named_parameters() if not (t.ndim >= 2 and "positional" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / a.warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / a.steps))))
    data = torch.utils.data.DataLoader(Batches(a.seed, a.batch_size, a.steps, a.p_pair, a.p_junk, a.max_junk),
                                       batch_size=None, num_workers=1, prefetch_factor=4)

    remap = null_remap() if a.tie_unused else None
    t0 = time.time()
    model.train()
    for step, (images, text, truth) in enumerate(data):
        img = F.normalize(model.encode_image(images), dim=-1)
        txt = F.normalize(encode_text_prefix(model, text, remap), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        loss = (soft_ce(logits, truth) + soft_ce(logits.T, truth.T)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if spread:  # the spread rows stay where they were put (AdamW's decay would shrink them)
            with torch.no_grad():
                model.token_embedding.weight[unused] = frozen_rows
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0 or step == a.steps - 1:
            print(f"step {step:5d} loss {loss.item():.4f} scale {model.logit_scale.exp().item():5.1f} "
                  f"{time.time() - t0:7.1f}s", flush=True)
        if (step + 1) % a.eval_every == 0 or step == a.steps - 1:
            if a.tie_unused:
                tie_unused_rows(model)
            print(f"  zero-shot {zero_shot(model)}", flush=True)

    wall = time.time() - t0
    if a.tie_unused:
        tie_unused_rows(model)
    model.eval()
    acc = zero_shot(model)
    print(f"done: {a.steps} steps in {wall / 60:.1f} min; zero-shot (seed 12345, n=500) {acc}")
    a.out_dir.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(a.out_dir / f"{a.name}.safetensors"))
    (a.out_dir / f"{a.name}.json").write_text(json.dumps(cfg, indent=2) + "\n")
    print(f"wrote {a.out_dir / a.name}.safetensors/.json")


if __name__ == "__main__":
    main()
