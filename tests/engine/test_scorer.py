"""What a scorer promises the engine (pez_core.engine.scorer): the activation budget that sizes batches."""
from __future__ import annotations

from pez_core.engine import ACTIVATION_ELEMENTS
from helpers import kept_for_backward


def test_activation_budget_bounds_what_backward_keeps(model):
    """prompts_that_fit assumes backward keeps ACTIVATION_ELEMENTS per position, width and layer at most."""
    for length in (4, 16, 75):
        assert ACTIVATION_ELEMENTS / 2 < kept_for_backward(model, length) <= ACTIVATION_ELEMENTS
