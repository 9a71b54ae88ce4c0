"""PEZ Combine Models: one PEZ_MODEL standing for two to four, so every PEZ node learns one prompt for all."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from .. import pez_core
from .schema import CATEGORY, PezModelType, search_aliases

log = logging.getLogger(__name__)

SLOTS = 4
WEIGHT_MAX = 100.0


def _weight(n: int, optional: bool) -> io.Input:
    return io.Float.Input(f"weight_{n}", default=1.0, min=0.0, max=WEIGHT_MAX, step=0.05, round=0.001,
                          optional=optional, tooltip=(
        f"How much model {n} counts (weights are relative: 1 and 1 share equally, 3 and 1 lean 75 % to the "
        "first). 0 leaves the model out."))


class CombineModels(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        models = []
        for n in range(1, SLOTS + 1):
            optional = n > 2
            models.append(PezModelType.Input(f"pez_model_{n}", optional=optional, tooltip=(
                f"Model {n} from PEZ Load Model (or another PEZ Combine Models)."
                + (" Optional." if optional else ""))))
            models.append(_weight(n, optional))
        return io.Schema(
            **search_aliases("PEZ_CombineModels"),
            node_id="PEZ_CombineModels",
            display_name="PEZ Combine Models",
            category=CATEGORY,
            description=("One prompt for several CLIP text encoders at once, e.g. SDXL's CLIP-L and CLIP-G: "
                         "the PEZ nodes after this one optimise a single prompt for every model, weighted, and "
                         "show each model's similarity."),
            inputs=models,
            outputs=[PezModelType.Output("pez_model", display_name="pez_model", tooltip=(
                "The models as one: connect it wherever a pez_model goes."))],
        )

    @classmethod
    def execute(cls, pez_model_1, weight_1: float, pez_model_2, weight_2: float, pez_model_3=None,
                weight_3: float | None = None, pez_model_4=None, weight_4: float | None = None) -> io.NodeOutput:
        given = [(m, w) for m, w in ((pez_model_1, weight_1), (pez_model_2, weight_2), (pez_model_3, weight_3),
                                     (pez_model_4, weight_4)) if m is not None]
        combined = pez_core.combine([m for m, _ in given], [1.0 if w is None else float(w) for _, w in given])
        log.info("PEZ Combine Models: %r", combined)
        return io.NodeOutput(combined)
