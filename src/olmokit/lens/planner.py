"""Cache-size planner: how many bytes a ``run_with_cache`` will store, before it runs.

Caching every hook of a large model at a long context can take more memory than the weights (an
OLMo-3-7B at 2048 tokens caches ≈ 30 GB in bf16, dominated by the ``[batch, heads, pos, pos]``
scores/patterns). The planner multiplies out each selected hook's shape, counts values that are the
*same tensor* under two names once (``hook_embed`` is ``blocks.0.hook_resid_pre``, and
``blocks.i.hook_resid_post`` is ``blocks.{i+1}.hook_resid_pre``), and :meth:`CachePlan.check` refuses a
run past a user limit with a message that names the biggest entries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .names import HookSpec

__all__ = ["CachePlan", "CacheTooLargeError", "plan_cache", "format_bytes"]


class CacheTooLargeError(ConfigError):
    """The planned cache exceeds the caller's ``max_cache_bytes``."""


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


@dataclass(frozen=True)
class CachePlan:
    """Per-hook shapes and bytes; ``unique_bytes`` is what memory the cache will actually hold."""

    entries: tuple[tuple[str, tuple[int, ...], int], ...]  #: (name, shape, bytes)
    total_bytes: int  #: sum over names
    unique_bytes: int  #: aliases counted once

    def check(self, max_bytes: int) -> CachePlan:
        if self.unique_bytes > max_bytes:
            top = sorted(self.entries, key=lambda e: -e[2])[:3]
            biggest = ", ".join(f"{n} {format_bytes(b)}" for n, _, b in top)
            raise CacheTooLargeError(
                f"the cache would hold {format_bytes(self.unique_bytes)} > limit {format_bytes(max_bytes)} "
                f"({len(self.entries)} hooks; biggest: {biggest}). Narrow names_filter, shorten the input "
                "or raise max_cache_bytes"
            )
        return self

    def summary(self) -> str:
        return (
            f"{len(self.entries)} hooks, {format_bytes(self.unique_bytes)} (aliases counted once)"
        )


def plan_cache(
    specs: Mapping[str, HookSpec],
    cfg: Mapping[str, int],
    batch: int,
    seq: int,
    dtype: torch.dtype,
    names: Sequence[str],
) -> CachePlan:
    # every symbol a HookSpec shape uses; ``key_pos`` equals ``pos`` (hooked runs have no KV cache)
    sizes = {
        "batch": batch,
        "pos": seq,
        "key_pos": seq,
        "d_model": cfg["d_model"],
        "n_heads": cfg["n_heads"],
        "n_kv_heads": cfg["n_kv_heads"],
        "d_head": cfg["d_head"],
        "d_mlp": cfg["d_mlp"],
        "one": 1,
    }
    itemsize = torch.empty((), dtype=dtype).element_size()
    entries = []
    chosen = set(names)
    total = unique = 0
    for name in names:
        spec = specs[name]
        shape = tuple(sizes[s] for s in spec.shape)
        n = 1
        for d in shape:
            n *= d
        nbytes = n * (4 if spec.fp32 else itemsize)
        entries.append((name, shape, nbytes))
        total += nbytes
        if not _is_alias(name, chosen):
            unique += nbytes
    return CachePlan(tuple(entries), total, unique)


def _is_alias(name: str, chosen: set[str]) -> bool:
    """True when ``name`` holds the same tensor as another selected name that is counted instead."""
    if name == "hook_embed":
        return "blocks.0.hook_resid_pre" in chosen
    if name.endswith(".hook_resid_pre"):
        i = int(name.split(".")[1])
        return i > 0 and f"blocks.{i - 1}.hook_resid_post" in chosen
    return False
