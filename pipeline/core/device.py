"""Choosing the torch device from a config value, the same way in every stage."""

from __future__ import annotations

import torch

from pipeline.core.errors import UserError


def resolve_device(device: str, key: str, local_rank: int = 0) -> torch.device:
    """'auto' -> CUDA (this rank's GPU) when present, else CPU.

    `key` names the parameter ("train.device") so that asking for CUDA on a machine without a
    GPU is an error the user can fix, not a crash deep in torch.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key} is 'cuda' but no CUDA GPU is visible; set it to auto or cpu")
    if device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)
