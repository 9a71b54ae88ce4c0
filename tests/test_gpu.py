"""The CUDA fast path (skipped without a GPU; run on the device with benchmarks/gpu_check.sh)."""
from __future__ import annotations

import pytest
import torch

import pez_core
from pez_core import PezConfig, cuda_graph
from tests.test_core import planted_problem

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def model(request):
    with torch.device("cuda"):  # random weights initialised on the GPU: instant
        return pez_core.load_model("ViT-B-32", "none", device="cuda", precision=request.param)


def run(model, graphs: bool, restarts: int = 4, lr_schedule: str = "constant"):
    objective, _ = planted_problem(model, length=16, seed=3)
    cuda_graph.set_enabled(graphs)
    try:
        config = PezConfig(steps=200, restarts=restarts, seed=0, lr_schedule=lr_schedule)
        result = pez_core.optimize(model, objective, config)[0]
    finally:
        cuda_graph.set_enabled(True)
    return result


@pytest.mark.parametrize("lr_schedule", ["constant", "cosine"])
def test_graph_equals_eager(model, lr_schedule, caplog):
    eager = run(model, False, lr_schedule=lr_schedule)
    with caplog.at_level("INFO", logger="pez_core.cuda_graph"):
        graphed = run(model, True, lr_schedule=lr_schedule)
    assert "captured as one CUDA graph" in caplog.text  # not a silent fall-back to eager
    if model.dtype == torch.float32:
        assert graphed.token_ids == eager.token_ids and graphed.prompt == eager.prompt
    else:  # bf16 kernels may differ by launch configuration; the search must land as well
        assert abs(graphed.similarity - eager.similarity) < 0.02


def test_cut_at_eot_on_device(model):
    if model.dtype != torch.float32:
        pytest.skip("exactness is checked in fp32")
    ids = torch.randint(1, 49406, (4, 16), device="cuda")
    full = torch.zeros(4, 77, dtype=torch.long, device="cuda")
    full[:, 0], full[:, 1:17], full[:, 17] = model.sot_id, ids, model.eot_id
    with torch.no_grad():
        reference = torch.nn.functional.normalize(model.clip.encode_text(full), dim=-1)
        assert (model.encode_ids(ids) - reference).abs().max() < 1e-5


def test_planted_recovery_on_device(model):
    objective, random_best = planted_problem(model, length=8, seed=1)
    result = pez_core.optimize(model, objective, PezConfig(prompt_len=8, steps=400, restarts=8))[0]
    assert result.similarity > random_best
