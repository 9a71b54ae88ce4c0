"""A naive PEZ loop with the reference implementation's semantics, as a baseline to measure against.

Written from the published algorithm and its reference code's behaviour: a 77-token padded
template, two text-tower passes per step (one with gradient, one to score), the whole
vocabulary renormalised every step, the nearest neighbour brought to the host, fp32, one
prompt, the score read with ``.item()`` every step.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from pez_core import PezModel


def _encode_template(model: PezModel, prompt: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """Text features of the 77-token template with ``prompt`` (1, L, d) placed after SOT."""
    clip = model.clip
    x = clip.token_embedding(template).clone()
    x[:, 1:1 + prompt.shape[1]] = prompt
    x = x + clip.positional_embedding
    x = clip.transformer(x, attn_mask=clip.attn_mask)
    x = clip.ln_final(x)[torch.arange(x.shape[0]), template.argmax(dim=-1)]
    return F.normalize(x @ clip.text_projection, dim=-1)


def reference_pez(model: PezModel, target: torch.Tensor, prompt_len: int = 16, steps: int = 100,
                  lr: float = 0.1, weight_decay: float = 0.1, seed: int = 0, record_at=()) -> dict:
    """Returns best prompt, best similarity, ms per step. ``target`` is one unit feature (D,).
    ``record_at``: steps after which the best so far is also recorded (``history``: step, similarity,
    prompt, seconds), so one run gives several step counts."""
    table = model.token_embeddings.float()
    template = torch.zeros(1, model.context_length, dtype=torch.long, device=model.device)
    template[0, 0], template[0, prompt_len + 1] = model.sot_id, model.eot_id
    generator = torch.Generator().manual_seed(seed)
    start = torch.randint(table.shape[0], (1, prompt_len), generator=generator).to(model.device)
    prompt = table[start].clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([prompt], lr=lr, weight_decay=weight_decay)
    best_sim, best_text, history = -1.0, "", []
    with torch.inference_mode(False), torch.enable_grad():
        started = time.perf_counter()
        for step in range(steps):
            vocab = F.normalize(table, dim=-1)  # renormalised every step
            nearest = (F.normalize(prompt.detach(), dim=-1) @ vocab.T).argmax(dim=-1)
            ids = torch.tensor(nearest.cpu().numpy(), device=model.device)  # host round trip
            hard = table[ids].detach().requires_grad_(True)
            loss = 1 - (_encode_template(model, hard, template) @ target).sum()
            prompt.grad, = torch.autograd.grad(loss, [hard])
            optimizer.step()
            with torch.no_grad():  # the second pass, to score the projected prompt
                sim = (_encode_template(model, table[ids], template) @ target).item()
            if sim > best_sim:
                best_sim, best_text = sim, model.decode(ids[0].tolist())
            if step + 1 in record_at:
                history.append({"step": step + 1, "similarity": best_sim, "prompt": best_text,
                                "seconds": time.perf_counter() - started})
        seconds = time.perf_counter() - started
    return {"prompt": best_text, "similarity": best_sim, "ms_per_step": 1000 * seconds / steps, "history": history}
