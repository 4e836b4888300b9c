"""Helpers shared by the lens tests (imported by name: tests/lens is on sys.path under pytest)."""

from __future__ import annotations

import torch


def no_pattern(name: str) -> bool:
    """Everything except scores/patterns, so every layer keeps SDPA (bit-identical to plain HF)."""
    return not name.endswith(("hook_pattern", "hook_attn_scores"))


def torch_hook_count(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )
