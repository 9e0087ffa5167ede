"""Diagnostics of flows: the activation memory that autograd keeps for backward."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["saved_activation_bytes"]


def saved_activation_bytes(module: nn.Module, *inputs: Any) -> int:
    """Bytes of the distinct tensors autograd saves for backward in one forward ``module(*inputs)``.

    This is the activation memory of ordinary backprop: the part that grows with depth, and that
    memory-efficient (invertible) backprop keeps flat. Every tensor autograd saves (seen through
    :func:`torch.autograd.graph.saved_tensors_hooks`) counts once per storage, so views of one tensor
    count once; the module's parameters are excluded. The forward runs with grad enabled; its graph is
    then dropped without a backward, so the module's gradients are left as they were.
    """
    param_ptrs = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in param_ptrs:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = module(*inputs)
    del output  # frees the graph and the saved tensors
    return sum(storages.values())
