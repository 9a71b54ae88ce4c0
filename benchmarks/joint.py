"""One prompt for two text towers: the joint prompt against each tower's own prompt, scored under both.

    python benchmarks/joint.py --steps 200                 # two random-weight ViT-B-32 towers (seeds 0, 1)
    python benchmarks/joint.py --pair sdxl --steps 100     # ViT-L-14 + ViT-bigG-14, random weights (GPU)

Every prompt distills one text (each tower's target is its own feature of the text) with the same
settings. Prints ms/step and peak GPU memory of each run, the similarity of every prompt under every
tower, and whether the issue's target holds: the joint prompt scores, under each tower, at least
0.05 above the first tower's own prompt under the second, and within 0.05 of that prompt under the first.
"""
from __future__ import annotations

import argparse
import logging
import platform
import time

import torch

import pez_core
from pez_core import PezConfig
from pez_core.clip.model import PezModel, resolve_dtype
from pez_core.common.devices import resolve_device

TEXT = "a photograph of a red fox in the snow, golden hour, highly detailed"
PAIRS = {"b32": (("ViT-B-32", 0), ("ViT-B-32", 1)), "sdxl": (("ViT-L-14", 0), ("ViT-bigG-14", 0))}
MARGIN = 0.05


def random_tower(arch: str, seed: int, device: torch.device, dtype: torch.dtype) -> PezModel:
    """A random-weight CLIP made from its own seed (load_model's cache would hand back the first one)."""
    import open_clip

    torch.manual_seed(seed)
    # built on the device: ViT-bigG-14 is 2.5 B parameters, minutes to initialise on a CPU
    with torch.device(device):
        clip = open_clip.create_model(arch, device=device)
    return PezModel(clip, f"{arch} (random, seed {seed})", device, dtype)


def timed(model, config: PezConfig, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    result = pez_core.distill(model, TEXT, config)
    ms = 1000 * (time.perf_counter() - started) / result.steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return result, ms, peak


def report(names, rows, own_a) -> list[str]:
    lines = ["| prompt for | ms/step | peak GiB | " + " | ".join(f"sim under {n}" for n in names) + " | prompt |",
             "|---|---|---|" + "---|" * len(names) + "---|"]
    for label, (result, ms, peak, sims) in rows.items():
        peak_text = f"{peak:.2f}" if peak is not None else "–"
        lines.append(f"| {label} | {ms:.1f} | {peak_text} | " + " | ".join(f"{s:.4f}" for s in sims)
                     + f" | {result.prompt} |")
    joint_sims = rows["joint"][3]
    above = joint_sims[1] - own_a[1]
    within = joint_sims[0] - own_a[0]
    lines.append(f"joint under {names[1]} − {names[0]}'s own prompt under {names[1]}: {above:+.4f} "
                 f"(target ≥ +{MARGIN}: {'met' if above >= MARGIN else 'NOT met'})")
    lines.append(f"joint under {names[0]} − {names[0]}'s own prompt under {names[0]}: {within:+.4f} "
                 f"(target ≥ −{MARGIN}: {'met' if within >= -MARGIN else 'NOT met'})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", choices=sorted(PAIRS), default="b32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--restarts", type=int)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.precision, device)
    towers = [random_tower(arch, seed, device, dtype) for arch, seed in PAIRS[args.pair]]
    names = [f"{arch}#{seed}" for arch, seed in PAIRS[args.pair]]
    config = PezConfig(prompt_len=args.prompt_len, steps=args.steps, restarts=args.restarts, seed=args.seed)
    pez_core.distill(towers, TEXT, PezConfig(prompt_len=args.prompt_len, steps=2))  # warm-up

    rows = {}
    for label, model in ((f"{names[0]} alone", towers[0]), (f"{names[1]} alone", towers[1]), ("joint", towers)):
        result, ms, peak = timed(model, config, device)
        sims = [float(s[0, 0]) for s in pez_core.score_each(towers, result.prompt, other_texts=TEXT)]
        rows[label] = (result, ms, peak, sims)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {device}, {dtype}, "
          f"{args.steps} steps, L = {args.prompt_len}, restarts {config.for_device(device).restarts}, "
          f"torch threads {torch.get_num_threads()}")
    for line in report(names, rows, rows[f"{names[0]} alone"][3]):
        print(line)


if __name__ == "__main__":
    main()
