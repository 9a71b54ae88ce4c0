"""How much a learned prompt beats a plain caption: the reference point shown beside every similarity.

A similarity means little alone: on the bundled demo CLIP a 1x1 black image's prompt scored 0.816, above
the star's 0.794. Every result now also carries what a plain caption (``REFERENCE_CAPTION``) scores against
the same targets (``PezResult.reference_similarity``). This prints both for the demo images, a 1x1 black
image, a style prompt for the three demo images and a distilled caption, at the CPU example workflow's
settings (8 tokens, 300 steps), for a few seeds.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/reference.py
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import pez_core  # noqa: E402
from pez_core.clip.objective import REFERENCE_CAPTION  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DISTILL_TEXT = "a large red star on a white background"


def demo_images() -> dict[str, np.ndarray]:
    images = {p.stem.removeprefix("pez-demo-"): np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255
              for p in sorted(ASSETS.glob("pez-demo-*.png"))}
    images["black 1x1"] = np.zeros((1, 1, 3), dtype=np.float32)
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-demo")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--prompt-len", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    args = parser.parse_args()
    model = pez_core.load_model(args.model, device="cpu")
    images = demo_images()
    print(f"model {args.model}, {args.prompt_len} tokens, {args.steps} steps; plain caption {REFERENCE_CAPTION!r}\n")
    print("| task | target | seed | learned prompt | similarity | plain caption | margin |")
    print("|---|---|---|---|---|---|---|")
    for seed in range(args.seeds):
        config = pez_core.PezConfig(prompt_len=args.prompt_len, steps=args.steps, seed=seed)
        rows = [("invert", name, r) for name, r in zip(images, pez_core.invert(model, list(images.values()), config))]
        demo = [image for name, image in images.items() if name != "black 1x1"]
        rows.append(("style", f"{len(demo)} demo images", pez_core.style(model, demo, config)))
        rows.append(("distill", repr(DISTILL_TEXT), pez_core.distill(model, DISTILL_TEXT, config)))
        for task, target, r in rows:
            print(f"| {task} | {target} | {seed} | {r.prompt} | {r.similarity:.3f} | {r.reference_similarity:.3f} "
                  f"| {r.similarity - r.reference_similarity:+.3f} |")


if __name__ == "__main__":
    main()
