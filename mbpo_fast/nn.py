"""Batched-ensemble building blocks shared by the dynamics ensemble and the SAC critics."""

from __future__ import annotations

import math

import torch
from torch import nn


class BatchedLinear(nn.Module):
    """``E`` independent linear layers evaluated as one batched matmul.

    weight: float32 [E, in_features, out_features]  (the safetensors layout of DESIGN §3)
    bias:   float32 [E, out_features]
    forward(x: [E, B, in_features]) -> [E, B, out_features]

    init="mbpo": truncated normal with std 1/(2*sqrt(in)) and zero bias (the original
    MBPO/mbrl-lib initialization); init="torch": nn.Linear's default (Kaiming-uniform),
    which SAC's critics are usually trained with.
    """

    def __init__(
        self,
        ensemble_size: int,
        in_features: int,
        out_features: int,
        init: str = "mbpo",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        for arg, value in (("ensemble_size", ensemble_size), ("in_features", in_features),
                           ("out_features", out_features)):
            if int(value) <= 0:
                raise ValueError(f"BatchedLinear: {arg} must be > 0, got {value}")
        self.ensemble_size = int(ensemble_size)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(ensemble_size, out_features))
        self.reset_parameters(init, generator)

    @torch.no_grad()
    def reset_parameters(self, init: str = "mbpo",
                         generator: torch.Generator | None = None) -> None:
        if init == "mbpo":
            std = 1.0 / (2.0 * math.sqrt(self.in_features))
            nn.init.trunc_normal_(self.weight, std=std, a=-2 * std, b=2 * std, generator=generator)
            self.bias.zero_()
        elif init == "torch":
            bound = 1.0 / math.sqrt(self.in_features)  # nn.Linear: kaiming_uniform(a=sqrt(5))
            self.weight.uniform_(-bound, bound, generator=generator)
            self.bias.uniform_(-bound, bound, generator=generator)
        else:
            raise ValueError(f"init: expected 'mbpo' or 'torch', got {init!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)

    def extra_repr(self) -> str:
        return (f"ensemble_size={self.ensemble_size}, in_features={self.in_features}, "
                f"out_features={self.out_features}")
