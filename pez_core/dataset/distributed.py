"""The caption job on Ray Data: the driver lists what is left to caption (finished outputs are skipped), Ray
splits it into blocks, and ``map_batches`` runs them on actors that each load the model once (one GPU per
actor on GPU machines, one CPU otherwise) and write the outputs themselves; the driver writes the manifest and
shows progress. Captions are the same as on one machine at the same torch thread count (a run is
batch-invariant), whichever actor ran an image. Ray is an optional extra: ``pip install "pez-hard-prompts[ray]"``.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

from ..clip.joint import AnyModel
from ..common.errors import PezError
from ..engine.config import PezConfig
from .files import ImageFile
from .job import CaptionOptions, CaptionSummary, Progress, caption_batch, journaled, plan, progress_of, record
from .shards import caption_shard, plan_shards

log = logging.getLogger(__name__)

PASSED_ENVIRONMENT = ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "OMP_NUM_THREADS")  # to the workers


def caption_on_ray(load_model: Callable[[], AnyModel], paths: list[Path], config: PezConfig,
                   options: CaptionOptions, *, address: str | None = None, workers: int | None = None,
                   threads: int = 1, webdataset: bool = False, gpu: bool = False,
                   progress: Progress | None = None) -> CaptionSummary:
    """Caption ``paths`` on Ray: a local instance (``address`` None) or the cluster at ``address``.
    ``load_model`` builds the model in each actor (it must pickle); ``threads`` is each actor's torch threads."""
    try:
        import ray
    except ImportError as e:
        raise PezError('Ray is not installed; pip install "pez-hard-prompts[ray]" (or run without --ray)') from e
    import dataclasses
    config = dataclasses.replace(config, batch_invariant=True)
    config.validate()
    if webdataset:
        everything, todo = plan_shards(paths, options)
        items = [{"shard": str(s)} for s in todo]
        summary = CaptionSummary(manifest=options.manifest)
    else:
        everything, todo = plan(paths, options)
        items = [{"path": str(i.path), "name": i.name, "caption": str(i.caption)} for i in todo]
        summary = CaptionSummary(total=len(everything), skipped=len(everything) - len(todo), manifest=options.manifest)
    started = time.perf_counter()
    if not items:
        log.info("nothing left to caption")
        return summary
    env = {k: os.environ[k] for k in PASSED_ENVIRONMENT if k in os.environ}
    if not ray.is_initialized():
        ray.init(address=address, runtime_env={"env_vars": env}, include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=False)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if gpu else 0
    actors = max(1, min(workers or gpus or int(resources.get("CPU", 1)), len(items)))
    per_block = 1 if webdataset else options.batch_size
    dataset = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // per_block)))
    captioned = dataset.map_batches(
        _Captioner, fn_constructor_kwargs=dict(load_model=load_model, config=config, options=options,
                                               threads=threads, webdataset=webdataset),
        batch_size=per_block, concurrency=actors, num_gpus=1 if gpus else 0, num_cpus=0 if gpus else threads,
        batch_format="pandas")
    log.info("captioning %d %s on %d Ray actors", len(items), "shards" if webdataset else "images", actors)
    import json
    for batch in captioned.iter_batches(batch_size=None, batch_format="pandas"):
        rows = [json.loads(row) for row in batch["row"]]
        summary.total += len(rows) if webdataset else 0
        record(rows, options, summary)
        summary.seconds = time.perf_counter() - started
        if progress is not None:
            progress(progress_of(summary, rows))
    return summary


class _Captioner:
    """One Ray actor: the model, loaded once; each call captions a block and writes its outputs."""

    def __init__(self, load_model: Callable[[], AnyModel], config: PezConfig, options: CaptionOptions,
                 threads: int, webdataset: bool):
        import torch
        torch.set_num_threads(threads)  # the captions are the same as a local run's at the same thread count
        self.model, self.config, self.options, self.webdataset = load_model(), config, options, webdataset
        self.journal = journaled(options)

    def __call__(self, batch):
        import json

        import pandas as pd
        if self.webdataset:
            rows = [row for shard in batch["shard"] for row in caption_shard(self.model, Path(shard), self.config,
                                                                              self.options)]
        else:
            images = [ImageFile(Path(p), n, Path(c)) for p, n, c in zip(batch["path"], batch["name"], batch["caption"])]
            rows = caption_batch(self.model, images, self.config, self.options, self.journal)
        return pd.DataFrame({"row": [json.dumps(row) for row in rows]})
