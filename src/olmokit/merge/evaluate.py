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

import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from ..eval.merge_metrics import merge_metric
from ..eval.modes import eval_mode
from .datasets import EvalSet
from .prefix import TEACHER_FORCED_MODES, PrefixCache, versions

__all__ = [
    "GROUP_BYTES",
    "Evaluator",
    "StateCache",
    "any_process",
    "init_distributed",
    "plan_batches",
    "world",
]


#: The most bytes of layer outputs :meth:`Evaluator.evaluate_group` holds at once (its candidates'
#: outputs of one wave of batches). A wave re-applies every candidate, so larger waves save swaps;
#: 1 GiB is a few batches of long samples on a 7B model, and the whole of a small eval set.
GROUP_BYTES = 1 << 30


#: Batches whose smallest product has fewer rows are not stacked (:meth:`Evaluator._stackable`).
MIN_STACKED_ROWS = 4


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
        group_bytes: int = GROUP_BYTES,
        candidate_batch: int = 8,
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
        self.group_bytes = int(group_bytes)
        if candidate_batch < 1:
            raise ValueError(f"candidate_batch must be >= 1, got {candidate_batch}")
        self.candidate_batch = int(candidate_batch)
        self.evaluations = 0  #: completed :meth:`evaluate` calls
        self.seconds = 0.0  #: time spent in them

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.evalsets]

    def set_focus(self, layer: int | None) -> None:
        """The first decoder layer the coming evaluations' states may differ in from each other
        (``None``: anything, e.g. the embedding; ``0``: layer 0 and up, not the embedding;
        ``num_layers``: only the final norm/lm_head).
        Only where passes are captured depends on it: a state that differs below it is still
        scored right (its stale prefix is recomputed)."""
        if self.prefix is not None:
            self.prefix.set_focus(layer)

    def _split(self) -> tuple[int, int]:
        rank, size = world()
        if self.distributed is False or size == 1:
            return 0, 1
        return rank, size

    def _score(self, set_index: int, batch_index: int, repeat: int = 1) -> list[float]:
        """The metric of one planned batch: one forward (or one generation) for the whole batch.
        ``repeat`` > 1 scores every sample ``repeat`` times in a row (``[s0, s0, .., s1, s1, ..]``:
        still longest first, so the metric keeps the rows in this order), the batch of a stacked
        pass (:meth:`evaluate_group`)."""
        evalset = self.evalsets[set_index]
        tok = self.tokenizer if self.tokenizer is not None else evalset.tokenizer
        chunk = [evalset.samples[i] for i in self.plans[set_index][batch_index]]
        if repeat > 1:
            chunk = [s for s in chunk for _ in range(repeat)]
        return merge_metric(evalset.mode, self.model, tok, chunk, len(chunk), **evalset.options)

    def _local_batches(self, set_index: int) -> range:
        rank, size = self._split()
        return range(rank, len(self.plans[set_index]), size)

    def sample_scores(self) -> dict[str, list[float]]:
        """Every sample's score, per dataset (the same full lists on every rank)."""
        start = time.perf_counter()
        vectors, counts = [], []
        prefix = self.prefix
        with torch.no_grad(), eval_mode(self.model), _begin(prefix):
            for set_index, (evalset, plan) in enumerate(zip(self.evalsets, self.plans)):
                cached = prefix is not None and evalset.mode in TEACHER_FORCED_MODES
                vec = torch.zeros(len(evalset), dtype=torch.float64)
                count = 0
                for batch_index in self._local_batches(set_index):
                    batch = plan[batch_index]
                    # one teacher-forced forward per call (batch_size = len(chunk))
                    with prefix.pass_for((set_index, batch_index)) if cached else nullcontext():
                        scores = self._score(set_index, batch_index)
                    vec[batch] = torch.tensor(scores, dtype=torch.float64)
                    count += len(batch)
                vectors.append(vec)
                counts.append(count)
        out = self._reduce([vectors], counts)[0]
        self.seconds += time.perf_counter() - start
        return out

    def _reduce(
        self, vectors: list[list[torch.Tensor]], counts: list[int]
    ) -> list[dict[str, list[float]]]:
        """Sum every candidate's per-sample vectors (and the per-set counts) over the processes
        with one ``all_reduce``; ``{set name: per-sample scores}`` per candidate."""
        _, size = self._split()
        flat = torch.cat([v for cand in vectors for v in cand] + [torch.tensor(counts).double()])
        if size > 1:
            device = _reduce_device()
            flat = flat.to(device)
            torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
            flat = flat.cpu()
        total_counts = flat[-len(self.evalsets) :].tolist() if self.evalsets else []
        for evalset, total in zip(self.evalsets, total_counts):
            n = len(evalset)
            if int(total) != n:  # a rank skipped or repeated work: never average silently
                raise RuntimeError(
                    f"{evalset.name}: {int(total)} samples scored across processes, expected {n}"
                )
        out, offset = [], 0
        for _ in vectors:
            scores = {}
            for evalset in self.evalsets:
                n = len(evalset)
                scores[evalset.name] = flat[offset : offset + n].tolist()
                offset += n
            out.append(scores)
        return out

    def evaluate(self) -> dict[str, float]:
        """``{dataset name: mean per-sample score}`` in eval-set order; lower is better. A
        non-finite mean (a metric returned inf/nan) is returned as is; the caller records it."""
        means = _means(self.sample_scores())
        self.evaluations += 1
        return means

    # ------------------------------------------------------------------ grouped candidates
    def groupable(self) -> bool:
        """Whether :meth:`evaluate_group` can share work between candidates now: a prefix cache,
        a focus layer ``k`` in ``0 .. num_layers - 1`` (so a candidate's own work is layer ``k``
        and everything above it is shared) and at least one teacher-forced dataset."""
        prefix = self.prefix
        if prefix is None or prefix.focus is None or prefix.focus >= prefix.adapter.num_layers:
            return False
        return any(e.mode in TEACHER_FORCED_MODES for e in self.evalsets)

    def evaluate_group(
        self, appliers: Sequence[Callable[[], Any]], restore: Callable[[], Any]
    ) -> list[dict[str, float]]:
        """The metrics of several candidates, each put in place by its ``appliers[j]()``, as
        :meth:`evaluate` would score them one by one, in order. ``restore()`` puts the current
        state back; it is called once, before this returns, and on every failure path.

        Every candidate must differ from the current state only inside the focus layer ``k``
        (:meth:`set_focus`): a layer step's donors, a unit step's donors of one unit, the ES
        offspring of one tensor (checked: a candidate that changes any other tensor is a
        ``RuntimeError``). An applier is called over the previous candidate (each overwrites the
        same tensors), so there is no restore between candidates.

        When :meth:`groupable`, teacher-forced batches are shared by up to ``candidate_batch``
        candidates at a time: per candidate only layer ``k`` runs, on the cached hidden states
        entering it (:meth:`~olmokit.merge.prefix.PrefixCache.layer_output`); then the layers
        above ``k``, the final norm and ``lm_head`` run *once* per batch for all of them, their
        layer-``k`` outputs stacked along the batch dimension
        (:meth:`~olmokit.merge.prefix.PrefixCache.stacked_pass`, which stands in for layers
        ``0 .. k``, so the weights layer ``k`` holds then do not matter; candidate ``j``'s sample
        ``i`` is row ``i * m + j``), and each candidate's scores are read from its rows. Those rows
        see the same inputs and masks as in a pass of their own, so the scores equal one-by-one
        evaluation up to how the BLAS kernels round: bit-identical on the test models (OLMo
        v1/2/3 at every focus), but a kernel chosen by shape or thread split may differ in the
        last float32 bit (measured on a 162M model with 2 threads: 4.8e-7 on a score of 8.54).
        A product of 1..3 rows, which MKL computes with another kernel, is kept out: such a tiny
        batch (one sample with a response of 1 or 2 tokens) runs its upper layers per candidate
        (:meth:`_stackable`). A decision could differ from one-by-one evaluation only between
        candidates whose metrics lie within that much of each other; that is why
        ``candidate_batch`` is part of a run's config hash (a resume groups as the run did). Generation sets
        are scored per candidate while it is in place. The candidates' layer outputs are held for a
        wave of batches at a time (at most ``group_bytes``, at least one batch), so memory stays
        bounded whatever the dataset size; each further wave applies every candidate again. Under
        several processes each rank scores its own batches and one ``all_reduce`` sums all the
        candidates' per-sample vectors, as :meth:`sample_scores` does.

        Otherwise (focus ``None``, focus ``num_layers``, only generation sets, no prefix cache,
        ``candidate_batch`` 1) the candidates are applied and evaluated one after the other.
        """
        out: list[dict[str, float]] = []
        try:
            if len(appliers) < 2 or self.candidate_batch < 2 or not self.groupable():
                for apply in appliers:
                    apply()
                    out.append(self.evaluate())
            else:
                for start in range(0, len(appliers), self.candidate_batch):
                    out += self._joint(appliers[start : start + self.candidate_batch])
        finally:
            restore()
        return out

    def _joint(self, appliers: Sequence[Callable[[], Any]]) -> list[dict[str, float]]:
        """One group of :meth:`evaluate_group`'s grouped path (the caller restores)."""
        start = time.perf_counter()
        m = len(appliers)
        prefix = self.prefix
        assert prefix is not None and prefix.focus is not None
        k = prefix.focus
        outside = prefix.outside(k)
        tf = [i for i, e in enumerate(self.evalsets) if e.mode in TEACHER_FORCED_MODES]
        gen = [i for i in range(len(self.evalsets)) if i not in tf]
        slots = [(i, b) for i in tf for b in self._local_batches(i)]
        vectors = [
            [torch.zeros(len(e), dtype=torch.float64) for e in self.evalsets] for _ in range(m)
        ]
        # begin(): the prefix signatures are computed once for the group (a candidate writes
        # only layer k, checked after each apply, so nothing below k changes in between)
        with torch.no_grad(), eval_mode(self.model), prefix.begin():
            for wave_index, wave in enumerate(self._waves(slots, m)):
                outputs: dict[tuple[int, int], list[torch.Tensor]] = {s: [] for s in wave}
                for j, apply in enumerate(appliers):
                    before = versions(outside)
                    apply()
                    if versions(outside) != before:
                        raise RuntimeError(
                            f"grouped evaluation: candidate {j} changed weights outside layer "
                            f"{k} (the focus); only layer {k} may differ between candidates"
                        )
                    for slot in wave:
                        run = functools.partial(self._score, *slot)
                        outputs[slot].append(prefix.layer_output(slot, run))
                    if wave_index == 0:
                        for i in gen:
                            for b in self._local_batches(i):
                                scores = self._score(i, b)
                                vectors[j][i][self.plans[i][b]] = torch.tensor(
                                    scores, dtype=torch.float64
                                )
                for slot in wave:
                    set_index, batch_index = slot
                    batch = self.plans[set_index][batch_index]
                    own = outputs.pop(slot)
                    if self._stackable(slot):
                        with prefix.stacked_pass(torch.stack(own, dim=1).flatten(0, 1)):
                            scores = self._score(*slot, repeat=m)
                        per = [scores[j::m] for j in range(m)]
                    else:  # a tiny batch: each candidate's layers above k on its own rows
                        per = []
                        for hidden in own:
                            with prefix.stacked_pass(hidden):
                                per.append(self._score(*slot))
                    del own
                    for j in range(m):
                        vectors[j][set_index][batch] = torch.tensor(per[j], dtype=torch.float64)
        counts = [
            sum(len(self.plans[i][b]) for b in self._local_batches(i))
            for i in range(len(self.evalsets))
        ]
        out = [_means(scores) for scores in self._reduce(vectors, counts)]
        self.evaluations += m
        self.seconds += time.perf_counter() - start
        return out

    def _stackable(self, slot: tuple[int, int]) -> bool:
        """Whether batch ``slot`` scores the same stacked as alone: its smallest matrix product
        (``lm_head`` over the kept response positions, ``batch * (longest response + 1)`` rows)
        has at least :data:`MIN_STACKED_ROWS` rows. Below that, MKL's sgemm takes a small-matrix
        kernel whose rows differ in the last bit from the same rows inside a larger product
        (measured on this project's CPUs: 1..3 rows differ, 4+ agree with any number of rows)."""
        set_index, batch_index = slot
        samples = self.evalsets[set_index].samples
        batch = self.plans[set_index][batch_index]
        rows = len(batch) * (max(len(samples[i].response_ids) for i in batch) + 1)
        return rows >= MIN_STACKED_ROWS

    def _waves(self, slots: list[tuple[int, int]], m: int) -> list[list[tuple[int, int]]]:
        """``slots`` cut into consecutive waves whose ``m`` candidates' layer outputs (``[batch,
        longest sample, hidden]`` each, in the model's dtype) take at most ``group_bytes``; a
        wave has at least one batch."""
        hidden = int(getattr(self.model.config, "hidden_size", 0) or 0)
        param = next(self.model.parameters(), None)
        size = param.element_size() if param is not None else 4
        waves: list[list[tuple[int, int]]] = [[]]  # generation-only: one empty wave
        used = 0
        for set_index, batch_index in slots:
            samples = self.evalsets[set_index].samples
            batch = self.plans[set_index][batch_index]
            longest = max(len(samples[i].context_ids) + len(samples[i].response_ids) for i in batch)
            cost = m * len(batch) * longest * hidden * size
            if waves[-1] and used + cost > self.group_bytes:
                waves.append([])
                used = 0
            waves[-1].append((set_index, batch_index))
            used += cost
        return waves


def _means(scores: Mapping[str, list[float]]) -> dict[str, float]:
    return {
        name: math.fsum(values) / len(values) if values else math.nan
        for name, values in scores.items()
    }


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
