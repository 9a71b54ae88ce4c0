"""ComfyUI runs every node under torch.inference_mode(): loading and optimising must still work."""
import torch

import pez_core
from pez_core import PezConfig
from helpers import write_tiny_checkpoint


def test_load_and_optimise_under_inference_mode(tmp_path):
    with torch.inference_mode():
        model = pez_core.load_model(str(write_tiny_checkpoint(tmp_path, "inference")), device="cpu")
        image = torch.rand(1, 32, 32, 3)  # an inference tensor, as ComfyUI hands images to nodes
        [result] = pez_core.invert(model, image, PezConfig(prompt_len=4, steps=5))
    assert result.prompt and result.steps == 5
