"""The CUDA-graph step (pez_core.engine.cuda_graph) off CUDA. On the device: test_gpu.py."""
from __future__ import annotations

import torch

from pez_core import Objective, PezConfig
from helpers import clip_run


def test_cuda_graph_falls_back_to_eager_off_cuda_and_says_why(model, caplog):
    from pez_core.engine import cuda_graph
    run = clip_run(model, Objective.stack([[(torch.randn(32), 1.0)]]), PezConfig(steps=50))
    with caplog.at_level("DEBUG", logger="pez_core.engine.cuda_graph"):
        step, done = cuda_graph.graphed_step(run, 50)
    assert step == run.step and done == 0
    assert "eager steps: device is cpu" in caplog.text
