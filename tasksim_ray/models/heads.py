"""Prediction heads shared by backbones and the mixture of experts."""

from __future__ import annotations

from torch import nn


def mlp_head(in_dim: int, hidden_dim: int, n_layers: int, dropout: float, n_outputs: int) -> nn.Sequential:
    """``n_layers`` linear layers (ReLU + dropout between them) from features to outputs."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(n_layers - 1):
        layers += [nn.Linear(width, hidden_dim), nn.ReLU(), nn.Dropout(dropout)]
        width = hidden_dim
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


def deepen_head(head: nn.Module, width: int, n_layers: int) -> nn.Sequential:
    """``head`` with ``n_layers`` new hidden layers (``width`` -> ``width``, ReLU) in front of it."""
    layers: list[nn.Module] = []
    for _ in range(n_layers):
        layers += [nn.Linear(width, width), nn.ReLU()]
    device = next(head.parameters()).device
    return nn.Sequential(*layers, *head).to(device) if isinstance(head, nn.Sequential) \
        else nn.Sequential(*layers, head).to(device)
