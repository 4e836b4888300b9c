"""Scoring the working model on every evaluation set, on one process or split across several.

:class:`Evaluator` returns one number per dataset: the mean over its samples of the per-sample score
of :func:`olmokit.eval.merge_metrics.merge_metric` under the dataset's mode (lower is better;
batched, and KV-cached greedy decoding for the generative modes, as the metrics themselves are).

Splitting across processes (``accelerate launch`` / ``torchrun``, any initialised
``torch.distributed`` group): each dataset's samples are cut into length-sorted batches, the same
batches one process would use, and batch ``j`` is scored by rank ``j % world_size``. Every rank
writes its samples' scores into a per-sample float64 vector (zeros elsewhere) and the vectors and the
per-dataset counts are summed with one ``all_reduce``. Each slot has a single contributor, so the sum
is exact: every rank ends up with the very per-sample scores one process computes (same batches, same
padding), and ``math.fsum`` turns them into the same means, bit for bit. Decisions made on these
numbers are therefore identical however many processes score them.

:class:`StateCache` memoises metrics by working state (the units that differ from the base and
where their tensors came from), so a state is never evaluated twice in a run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from ..eval.merge_metrics import merge_metric
from ..eval.modes import eval_mode
from .datasets import EvalSet
from .prefix import TEACHER_FORCED_MODES, PrefixCache

__all__ = [
    "Evaluator",
    "StateCache",
    "any_process",
    "init_distributed",
    "plan_batches",
    "world",
]


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised default process group, else ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed(device: str | torch.device = "cpu") -> tuple[int, int]:
    """Join the process group a launcher describes (``WORLD_SIZE`` > 1 in the environment, as
    ``accelerate launch`` and ``torchrun`` set it), if not already joined; ``(rank, world_size)``.

    gloo for CPU runs, nccl for CUDA. A single process (no ``WORLD_SIZE``) is left alone.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.distributed.is_available():
        if not torch.distributed.is_initialized():
            cuda = torch.device(device).type == "cuda"
            if cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    return world()


def any_process(flag: bool) -> bool:
    """True when ``flag`` is true on any process of the group (a MAX all-reduce); ``flag`` itself
    for one process. For decisions every rank must take alike although their inputs differ, such as
    an ES time budget (each rank reads its own clock)."""
    _, size = world()
    if size == 1:
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=_reduce_device())
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)


def plan_batches(evalset: EvalSet, batch_size: int) -> list[list[int]]:
    """Sample indices in batches of similar total length (longest first, ties in file order), the
    unit of work a process is given. Independent of the number of processes."""
    lengths = [len(s.context_ids) + len(s.response_ids) for s in evalset.samples]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _reduce_device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Evaluator:
    """Scores ``model`` on ``evalsets`` (built by :func:`olmokit.merge.datasets.load_datasets`).

    ``distributed``: ``None`` (default) splits across processes when a ``torch.distributed`` group
    with more than one process is initialised; ``False`` always scores everything locally.
    ``tokenizer`` defaults to the one each eval set was built with. ``prefix_cache`` (default on):
    teacher-forced metrics (``bigram_loss``, ``nll``) reuse the hidden states entering the layer
    set by :meth:`set_focus`, so a candidate that differs from the current state only from that
    layer on runs only the layers above it; scores are bit-identical either way
    (:mod:`olmokit.merge.prefix` says what is cached and when it is invalidated).
    """

    def __init__(
        self,
        model: nn.Module,
        evalsets: Sequence[EvalSet],
        batch_size: int = 8,
        distributed: bool | None = None,
        tokenizer: Any = None,
        prefix_cache: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        names = [e.name for e in evalsets]
        if len(set(names)) != len(names):
            raise ValueError(f"evaluation set names must be unique, got {names}")
        self.model = model
        self.evalsets = list(evalsets)
        self.batch_size = batch_size
        self.distributed = distributed
        self.tokenizer = tokenizer
        self.plans = [plan_batches(e, batch_size) for e in self.evalsets]
        self.prefix = PrefixCache(model) if prefix_cache else None
        self.evaluations = 0  #: completed :meth:`evaluate` calls
        self.seconds = 0.0  #: time spent in them

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.evalsets]

    def set_focus(self, layer: int | None) -> None:
        """The first decoder layer the coming evaluations' states may differ in from each other
        (``None``/0: anything, e.g. the embedding; ``num_layers``: only the final norm/lm_head).
        Only where passes are captured depends on it: a state that differs below it is still
        scored right (its stale prefix is recomputed)."""
        if self.prefix is not None:
            self.prefix.set_focus(layer)

    def _split(self) -> tuple[int, int]:
        rank, size = world()
        if self.distributed is False or size == 1:
            return 0, 1
        return rank, size

    def sample_scores(self) -> dict[str, list[float]]:
        """Every sample's score, per dataset (the same full lists on every rank)."""
        rank, size = self._split()
        start = time.perf_counter()
        vectors, counts = [], []
        prefix = self.prefix
        with torch.no_grad(), eval_mode(self.model), _begin(prefix):
            for set_index, (evalset, plan) in enumerate(zip(self.evalsets, self.plans)):
                cached = prefix is not None and evalset.mode in TEACHER_FORCED_MODES
                tok = self.tokenizer if self.tokenizer is not None else evalset.tokenizer
                vec = torch.zeros(len(evalset), dtype=torch.float64)
                count = 0
                for batch_index in range(rank, len(plan), size):
                    batch = plan[batch_index]
                    chunk = [evalset.samples[i] for i in batch]
                    # one teacher-forced forward per call (batch_size = len(chunk))
                    with prefix.pass_for((set_index, batch_index)) if cached else nullcontext():
                        scores = merge_metric(
                            evalset.mode, self.model, tok, chunk, len(chunk), **evalset.options
                        )
                    vec[batch] = torch.tensor(scores, dtype=torch.float64)
                    count += len(batch)
                vectors.append(vec)
                counts.append(count)
        flat = torch.cat([*vectors, torch.tensor(counts, dtype=torch.float64)])
        if size > 1:
            device = _reduce_device()
            flat = flat.to(device)
            torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
            flat = flat.cpu()
        out, offset = {}, 0
        total_counts = flat[-len(self.evalsets) :].tolist() if self.evalsets else []
        for evalset, total in zip(self.evalsets, total_counts):
            n = len(evalset)
            if int(total) != n:  # a rank skipped or repeated work: never average silently
                raise RuntimeError(
                    f"{evalset.name}: {int(total)} samples scored across processes, expected {n}"
                )
            out[evalset.name] = flat[offset : offset + n].tolist()
            offset += n
        self.seconds += time.perf_counter() - start
        return out

    def evaluate(self) -> dict[str, float]:
        """``{dataset name: mean per-sample score}`` in eval-set order; lower is better. A
        non-finite mean (a metric returned inf/nan) is returned as is; the caller records it."""
        means = {
            name: math.fsum(scores) / len(scores) if scores else math.nan
            for name, scores in self.sample_scores().items()
        }
        self.evaluations += 1
        return means


def _begin(prefix: PrefixCache | None) -> Any:
    return prefix.begin() if prefix is not None else nullcontext()


class StateCache:
    """Metrics of already evaluated working states, keyed by :meth:`state_key`.

    ``hits``/``misses`` count :meth:`get` outcomes (the report records them).
    """

    def __init__(self) -> None:
        self._store: dict[str, dict[str, Any]] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def state_key(overrides: Mapping[str, Any], base: str | None = None) -> str:
        """A hash of the ``{unit name: source}`` pairs that differ from the base.

        ``source`` is any JSON value: a donor name, or a donor plus its ES operations. Entries whose
        source equals ``base`` (the unit still holds the base's tensors) are dropped, so a state
        reached by swapping a unit and swapping it back has the base's key. Order-independent.
        """
        items = {str(k): v for k, v in overrides.items() if base is None or v != base}
        text = json.dumps(items, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def get(self, key: str) -> dict[str, Any] | None:
        if key in self._store:
            self.hits += 1
            return dict(self._store[key])
        self.misses += 1
        return None

    def put(self, key: str, metrics: Mapping[str, Any]) -> None:
        self._store[key] = dict(metrics)

    def evaluate(self, key: str, evaluate: Any) -> dict[str, Any]:
        """The cached metrics of ``key``, or ``evaluate()``'s (stored) when it is new."""
        cached = self.get(key)
        if cached is not None:
            return cached
        metrics = dict(evaluate())
        self.put(key, metrics)
        return dict(metrics)

    def __contains__(self, key: object) -> bool:
        return key in self._store

    def __len__(self) -> int:
        return len(self._store)

    def stats(self) -> dict[str, int]:
        """``{"hits", "misses", "states"}`` for the merge report."""
        return {"hits": self.hits, "misses": self.misses, "states": len(self._store)}
