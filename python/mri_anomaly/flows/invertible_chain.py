"""A chain of invertible layers, with optional memory-efficient (activation-free) backprop."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["InvertibleChain"]


class _LayerFromOutput(torch.autograd.Function):
    """One layer of a memory-efficient chain: an autograd node that saves no activations.

    Only the chain's last layer saves its output. In backward, each layer rebuilds its input from its
    output (``reverse_and_grad``) and leaves it in ``slots`` for the layer before, which runs next. Each
    layer's parameter gradients leave through autograd as soon as that layer is done, so neither
    activations nor gradient temporaries pile up with depth (and DistributedDataParallel's gradient
    hooks fire as usual).
    """

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, layer: nn.Module, slots: dict, index: int, is_last: bool, *params: torch.Tensor
    ):  # type: ignore[override]
        with torch.no_grad():
            y, logdet = layer(x)
        ctx.layer, ctx.slots, ctx.index, ctx.is_last = layer, slots, index, is_last
        if is_last:
            ctx.save_for_backward(y)
        return y, logdet

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor | None, grad_logdet: torch.Tensor | None):  # type: ignore[override]
        if ctx.is_last:
            (y,) = ctx.saved_tensors
        else:
            if ctx.index not in ctx.slots:
                raise RuntimeError(
                    "memory-efficient backprop: the output of this layer was not rebuilt; backward through an "
                    "InvertibleChain can run once per forward (no retain_graph)"
                )
            y = ctx.slots.pop(ctx.index)
        if grad_y is None:
            grad_y = torch.zeros_like(y)
        if grad_logdet is None:
            grad_logdet = y.new_zeros(y.shape[0])
        x, grad_x, param_grads = ctx.layer.reverse_and_grad(y, grad_y, grad_logdet)
        if ctx.index > 0:
            ctx.slots[ctx.index - 1] = x.detach()  # the output of the previous layer
        return (grad_x if ctx.needs_input_grad[0] else None, None, None, None, None, *param_grads)


class InvertibleChain(nn.Module):
    """Invertible layers applied in order; ``logdet`` is the sum of theirs.

    Each layer implements ``forward(x) -> (y, logdet)``, ``inverse(y)`` and
    ``reverse_and_grad(y, grad_y, grad_logdet) -> (x, grad_x, param_grads)``.

    With ``memory_efficient=True`` and autograd recording, the chain keeps only its output: each layer is an
    autograd node that saves nothing, and backward rebuilds each layer's input from its output (invertible
    backprop), so activation memory does not grow with the number of layers. Gradients equal those of ordinary
    autograd up to the rounding of the reconstruction. Without autograd recording both modes are the same.

    Args:
        layers: the invertible layers.
        memory_efficient: rebuild activations in backward instead of storing them.
    """

    def __init__(self, layers: Sequence[nn.Module], memory_efficient: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.memory_efficient = bool(memory_efficient)

    def _forward_layers(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, layer_logdet = layer(x)
            logdet = logdet + layer_logdet
        return x, logdet

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(N, C, *spatial)`` -> ``(y, logdet)``, ``logdet`` ``(N,)``."""
        if self.memory_efficient and torch.is_grad_enabled():
            slots: dict[int, torch.Tensor] = {}
            logdet = x.new_zeros(x.shape[0])
            last = len(self.layers) - 1
            for index, layer in enumerate(self.layers):
                x, layer_logdet = _LayerFromOutput.apply(
                    x, layer, slots, index, index == last, *layer.parameters()
                )
                logdet = logdet + layer_logdet
            return x, logdet
        return self._forward_layers(x)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y

    def reverse_and_grad(
        self, y: torch.Tensor, grad_y: torch.Tensor, grad_logdet: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor | None, ...]]:
        """Rebuild the chain's input from its output and backpropagate, layer by layer in reverse.

        Returns:
            ``(x, grad_x, param_grads)``, ``param_grads`` aligned with ``tuple(self.parameters())``.
        """
        if grad_logdet is None:
            grad_logdet = y.new_zeros(y.shape[0])
        grads_by_id: dict[int, torch.Tensor | None] = {}
        for layer in reversed(self.layers):
            y, grad_y, layer_grads = layer.reverse_and_grad(y, grad_y, grad_logdet)
            for param, grad in zip(layer.parameters(), layer_grads):
                grads_by_id[id(param)] = grad
        return y, grad_y, tuple(grads_by_id.get(id(p)) for p in self.parameters())

    def extra_repr(self) -> str:
        return f"memory_efficient={self.memory_efficient}"
