"""The CUDA fast path (skipped without a GPU; run on the device with benchmarks/gpu_check.sh)."""
from __future__ import annotations

import warnings

import pytest
import torch

import pez_core
from pez_core import PezConfig, cuda_graph
from pez_core.objective import ACTIVATION_ELEMENTS
from helpers import encode_text_reference, kept_for_backward, planted_problem

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
    eager, eager_again = run(model, False, lr_schedule=lr_schedule), run(model, False, lr_schedule=lr_schedule)
    with caplog.at_level("INFO", logger="pez_core.cuda_graph"):
        graphed = run(model, True, lr_schedule=lr_schedule)
    assert "captured as one CUDA graph" in caplog.text  # not a silent fall-back to eager
    reproducible = eager_again.token_ids == eager.token_ids
    if model.dtype == torch.float32 and reproducible:
        assert graphed.token_ids == eager.token_ids and graphed.prompt == eager.prompt
    else:  # bf16 kernels may differ by launch configuration; the search must land as well
        if model.dtype == torch.float32:
            warnings.warn("eager fp32 runs differ from each other on this GPU (non-deterministic kernels); "
                          "graph = eager checked by similarity only")
        assert abs(graphed.similarity - eager.similarity) < 0.02


def test_cut_at_eot_on_device(model):
    if model.dtype != torch.float32:
        pytest.skip("exactness is checked in fp32")
    ids = torch.randint(1, 49406, (4, 16), device="cuda")
    with torch.no_grad():
        assert (model.encode_ids(ids) - encode_text_reference(model, ids)).abs().max() < 1e-5


def test_planted_recovery_on_device(model):
    objective, random_best = planted_problem(model, length=8, seed=1)
    result = pez_core.optimize(model, objective, PezConfig(prompt_len=8, steps=400, restarts=8))[0]
    assert result.similarity > random_best


def test_offload_frees_the_gpu_and_the_next_run_brings_the_tower_back(model):
    objective, _ = planted_problem(model, length=8, seed=2)
    config = PezConfig(prompt_len=8, steps=60, restarts=2)
    before = pez_core.optimize(model, objective, config)[0]
    torch.cuda.synchronize()
    resident = torch.cuda.memory_allocated()
    table_bytes = model.clip.token_embedding.weight.numel() * model.clip.token_embedding.weight.element_size()
    model.offload("cpu")
    assert model.clip.token_embedding.weight.device.type == "cpu"
    assert resident - torch.cuda.memory_allocated() >= table_bytes  # at least the token table left the GPU
    after = pez_core.optimize(model, objective, config)[0]
    assert model.clip.token_embedding.weight.device.type == "cuda"
    assert after.similarity == pytest.approx(before.similarity, abs=0.02)


def test_activation_budget_holds_on_the_device(model):
    assert kept_for_backward(model, 16) <= ACTIVATION_ELEMENTS
