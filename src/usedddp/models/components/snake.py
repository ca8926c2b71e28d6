"""The snake activation (Ziyin et al., "Neural Networks Fail to Learn Periodic Functions and How
to Fix It", NeurIPS 2020; x + sin^2(alpha x) / alpha, as DAC uses it) with a backward pass that
keeps only its input.

DAC's snake (dac.nn.layers.snake) runs as four elementwise ops under autograd, each of which
saves a full-size tensor: in a dac16k training step the codec's snakes held about 60% of the
step's saved activations (benchmarks/memory_cpu.json). Here the forward is DAC's own function
computed eagerly (bit-identical output) and the backward recomputes sin(alpha x) from the
saved input: one tensor kept per activation instead of four, for one extra sine per backward.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    from dac.nn.layers import Snake1d, snake


class _Snake(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor) -> Tensor:
        ctx.save_for_backward(x, alpha)
        # DAC's expression, eagerly: its scripted function, called here, still records a graph
        # of its own under TorchScript's profiling executor.
        shape = x.shape
        x3 = x.reshape(shape[0], shape[1], -1)
        return (x3 + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x3).pow(2)).reshape(shape)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, alpha = ctx.saved_tensors
        shape = x.shape
        # (B, C, ...) -> (B, C, T), as DAC's function; alpha (1, C, 1). DAC adds 1e-9 to alpha.
        x3, g3 = x.reshape(shape[0], shape[1], -1), grad.reshape(shape[0], shape[1], -1)
        inv = (alpha + 1e-9).reciprocal()
        ax = alpha * x3
        sin2 = torch.sin(2 * ax)  # d sin^2(ax) / d(ax) = sin(2ax)
        grad_x = grad_alpha = None
        if ctx.needs_input_grad[0]:
            grad_x = (g3 * (1 + inv * alpha * sin2)).to(x.dtype).reshape(shape)
        if ctx.needs_input_grad[1]:
            # d/d alpha [sin^2(alpha x) / (alpha + eps)] = x sin(2 alpha x) / (alpha + eps) - sin^2(alpha x) / (alpha + eps)^2
            local = x3 * sin2 * inv - torch.sin(ax).square() * inv.square()
            grad_alpha = (g3 * local).sum(dim=(0, 2), keepdim=True).to(alpha.dtype)
        return grad_x, grad_alpha


class SnakeSavingInput(Snake1d):
    """dac.nn.layers.Snake1d (the same `alpha` parameter, so release weights load unchanged)
    whose backward keeps only the input (_Snake)."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.alpha.requires_grad):
            return _Snake.apply(x, self.alpha)
        return snake(x, self.alpha)


def use_input_saving_snake(module: nn.Module) -> int:
    """Replace every dac Snake1d under `module` by SnakeSavingInput, in place, keeping each
    alpha parameter object. Returns how many were replaced."""
    count = 0
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if type(child) is Snake1d:
                replacement = SnakeSavingInput.__new__(SnakeSavingInput)
                replacement.__dict__.update(child.__dict__)
                setattr(parent, name, replacement)
                count += 1
    return count
