"""GPU speed: the naive reference loop against the engine (eager and CUDA graph), one process.

    python benchmarks/gpu.py --models ViT-H-14 ViT-L-14

Random weights (timing does not depend on them), built directly on the GPU. Prints a markdown
table: ms/step, 3000-step time, ratios to the reference loop, TFLOP/s of useful work, and the
peak memory of the text-only run.
"""
from __future__ import annotations

import argparse
import datetime
import time

import torch

import pez_core
from pez_core import Objective, PezConfig, cuda_graph

try:
    from benchmarks.reference_loop import reference_pez
except ImportError:
    from reference_loop import reference_pez


def text_flops_per_step(model, batch: int, prompt_len: int, vocab_rows: int) -> float:
    """Forward + input-gradient backward of the text tower on L+2 positions, plus the projection."""
    clip = model.clip
    width, layers = clip.token_embedding.weight.shape[1], len(clip.transformer.resblocks)
    n = prompt_len + 2
    per_layer = 2 * n * 12 * width ** 2 + 2 * 2 * n * n * width    # matmuls + attention scores/values
    forward = layers * per_layer + 2 * width * clip.text_projection.shape[-1]
    return batch * (2 * forward + 2 * prompt_len * width * vocab_rows)  # backward ~ forward (no weight grads)


def timed(model, objective, config, graphs: bool) -> tuple[float, pez_core.PezResult]:
    cuda_graph.set_enabled(graphs)
    pez_core.optimize(model, objective, PezConfig(**{**config.__dict__, "steps": 20}))  # warm-up
    torch.cuda.synchronize()
    started = time.perf_counter()
    result = pez_core.optimize(model, objective, config)[0]
    torch.cuda.synchronize()
    cuda_graph.set_enabled(True)
    return 1000 * (time.perf_counter() - started) / config.steps, result


def bench(arch: str, steps: int, reference_steps: int) -> list[str]:
    torch.cuda.reset_peak_memory_stats()
    with torch.device("cuda"):
        model = pez_core.load_model(arch, "none", device="cuda", precision="bf16")
    reference_model = None
    rows = []
    target = model.encode_texts(["a photograph of a red fox in the snow, golden hour, highly detailed"])[0]
    objective = Objective.stack([[(target, 1.0)]])
    vocab_rows = len(pez_core.allowed_token_ids(model.tokenizer, "words"))
    torch.cuda.reset_peak_memory_stats()
    for restarts, graphs in ((1, False), (1, True), (16, True), (256, True)):
        config = PezConfig(steps=steps, restarts=restarts, seed=0)
        ms, result = timed(model, objective, config, graphs)
        tflops = text_flops_per_step(model, restarts, 16, vocab_rows) / (ms / 1000) / 1e12
        rows.append((f"engine bf16 {'graph' if graphs else 'eager'}, {restarts} restart(s)", ms, tflops, result.similarity))
    peak_gb = torch.cuda.max_memory_allocated() / 2 ** 30
    del model
    pez_core.clear_cache()
    torch.cuda.empty_cache()
    with torch.device("cuda"):
        reference_model = pez_core.load_model(arch, "none", device="cuda", precision="fp32")
    ref_target = reference_model.encode_texts(["a photograph of a red fox in the snow, golden hour, highly detailed"])[0]
    reference = reference_pez(reference_model, ref_target, 16, steps=reference_steps)
    ref_ms = reference["ms_per_step"]
    pez_core.clear_cache()
    torch.cuda.empty_cache()
    one = rows[1][1]
    out = [f"### {arch}, L=16 — {torch.cuda.get_device_name()} — {datetime.date.today()}",
           "| loop | ms/step | 3000 steps (s) | vs reference | TFLOP/s useful | best sim |", "|---|---|---|---|---|---|",
           f"| reference loop (fp32, 77 tokens, 2 passes, host sync) | {ref_ms:.1f} | {3 * ref_ms:.1f} | 1.0x | | {reference['similarity']:.3f} |"]
    out += [f"| {name} | {ms:.2f} | {3 * ms:.1f} | {ref_ms / ms:.1f}x | {tf:.0f} | {sim:.3f} |" for name, ms, tf, sim in rows]
    out.append(f"16 restarts / 1 restart: {rows[2][1] / one:.2f}x; 256 / 1: {rows[3][1] / one:.2f}x; "
               f"peak VRAM (text tower only, bf16): {peak_gb:.2f} GiB")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ViT-H-14", "ViT-L-14"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--reference-steps", type=int, default=50)
    args = parser.parse_args()
    for arch in args.models:
        print("\n".join(bench(arch, args.steps, args.reference_steps)), flush=True)


if __name__ == "__main__":
    main()
