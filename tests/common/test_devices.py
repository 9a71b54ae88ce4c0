"""Devices (pez_core.common.devices): a device that is not there is named, with what to use instead."""
from __future__ import annotations

import re

import pytest
import torch

from pez_core import PezError
from pez_core.common import devices


@pytest.mark.parametrize(("device", "gpus", "message"), [
    ("cuda", 0, "device 'cuda' was asked for but no CUDA GPU is available; use device auto or cpu"),
    ("cuda:3", 1, "device 'cuda:3' was asked for but this machine has 1 CUDA GPU"),
    ("gpu", 0, "unknown device 'gpu'; use auto, cpu, cuda or cuda:N"),
])
def test_a_device_that_is_not_there_is_named(monkeypatch, device, gpus, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    with pytest.raises(PezError, match=re.escape(message)):
        devices.resolve_device(device)
