"""Exact nearest-neighbour argmin (to be written)."""

from __future__ import annotations

import torch


def nn_argmin(queries: torch.Tensor, keys, *, return_distances: bool = False):
    raise NotImplementedError
