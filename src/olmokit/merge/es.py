"""(1+λ) evolution strategies that refine one weight tensor: SVD-ES and norm-ES.

Pure tensor math plus injected callbacks; nothing here knows about models. The caller hands over
an fp32 *master* copy of the tensor, a ``write`` callback that puts a tensor into the model (casting
to the model's dtype), an ``evaluate`` callback returning ``{dataset: metric}`` (lower is better)
and an ``accept(candidate_metrics, elite_metrics)`` rule. ES perturbs the fp32 master, not the
model's tensor, so a perturbation below bf16 resolution is not rounded away between generations.

Offspring (generation g, elite W, noise drawn from ``torch.Generator`` seeded with
``generation_seed(op_seed, g)``, on CPU, then moved to W's device):

- SVD-ES: ``U, S, Vh = svd(W / max|W|)`` keeping ``S > 1e-10`` (r values); inverse damping
  ``a_k = sqrt(max S / (S_k + 1e-10))`` divided by its mean (mean 1: small singular directions get
  larger steps); ``Δ = randn(λ, r) · σ · max(std(S), 1e-10)`` (torch's unbiased std);
  offspring i = ``W ⊙ exp(clamp(U · diag(Δ_i ⊙ a) · Vh, ±c))``.
- Norm-ES: row norms ``m = ‖W_i,:‖``, directions ``D = W / (m + 1e-10)``;
  ``Δ = randn(λ, rows) · σ``; offspring i = ``D ⊙ exp(ln(m + 1e-10) + Δ_i)[:, None]`` (row
  directions kept, row norms scaled by ``exp(Δ_i)``).

Per generation every offspring is written and evaluated (until the budget runs out); the ones the
``accept`` rule passes (default :func:`no_regression_accept`: no dataset worse than the elite beyond
ε, at least one strictly better) compete by Copeland (:mod:`.select`, ties by Borda then offspring
index); the winner becomes the elite and is recorded as an :class:`ESOp`, from which :func:`replay`
regenerates it bit for bit.

Step size σ (``step_rule``), updated after every generation:

- ``"one_fifth"`` (both kinds): ``σ ← σ · exp((p_s − 1/5) / (1 − 1/5))`` with ``p_s`` = accepted /
  evaluated offspring of the generation (unchanged at p_s = 1/5, × e^-0.25 ≈ 0.78 when none passes,
  × e when all pass).
- ``"fixed"`` (the original's factors): SVD-ES ``σ ← 0.8 · σ0`` after a generation with an accepted
  offspring (not cumulative; the noise scale still follows the new ``std(S)``), unchanged otherwise;
  norm-ES ``σ ← 0.9 · σ`` after an accepted generation (cumulative), unchanged otherwise.

λ defaults to ``4 + ⌊3 ln dim⌋`` with dim = the number of kept singular values (SVD-ES, fixed from
the first generation) or the number of rows (norm-ES).

Bit-identity of :func:`replay` holds on the same device type and torch build as the run. On CPU
the SVD runs on one thread (MKL's SVD changes its last bits with the thread count; the matrix
products and norms here do not), so the thread count does not matter; across LAPACK/BLAS builds
or between CPU and GPU the last bits may differ.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import Tensor

from olmokit.errors import ConfigError, ReportError

from .select import METHODS, degraded, improved, select

__all__ = [
    "ESBudget",
    "ESOp",
    "ESResult",
    "KINDS",
    "STEP_RULES",
    "SVDBasis",
    "default_lambda",
    "generation_seed",
    "inverse_damping",
    "no_regression_accept",
    "norm_offspring",
    "replay",
    "run_es",
    "skip_reason",
    "svd_basis",
    "svd_noise",
    "svd_offspring",
    "tensor_seed",
]

KINDS = ("svd", "norm")
STEP_RULES = ("one_fifth", "fixed")
#: Singular values at or below this are dropped (the original's cut-off).
SVD_CUTOFF = 1e-10
#: Added to norms and singular values before dividing or taking logs (the original's constant).
EPS = 1e-10

Metrics = Mapping[str, float | None]


def default_lambda(dim: int) -> int:
    """Population size ``4 + ⌊3 ln dim⌋`` (the CMA-ES default; dim 2048 → 26, 4096 → 28)."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return 4 + math.floor(3 * math.log(dim))


def _mix(*parts: object) -> int:
    """A 63-bit seed from a stable hash (not Python's ``hash``, which PYTHONHASHSEED salts)."""
    text = ":".join(str(p) for p in ("olmokit.merge.es", *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def tensor_seed(run_seed: int, kind: str, key: str) -> int:
    """The per-tensor seed of one ES run: distinct per (run seed, kind, tensor key), stable
    across runs and processes."""
    return _mix(int(run_seed), kind, key)


def generation_seed(seed: int, generation: int) -> int:
    """The generator seed of one generation (hashed: no two (tensor, generation) pairs collide)."""
    return _mix(int(seed), int(generation))


def _generator(seed: int, generation: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(generation_seed(seed, generation))


@dataclass(frozen=True)
class ESOp:
    """One accepted ES step, enough to regenerate it: see :func:`replay`.

    ``sigma`` is the relative step σ of that generation (SVD-ES draws with std σ·std(S), norm-ES
    with std σ); ``offspring`` is the accepted index in ``range(lam)``; ``unit``/``key`` name the
    tensor.
    """

    kind: str
    unit: str
    key: str
    seed: int
    generation: int
    sigma: float
    offspring: int
    lam: int
    clamp: float

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> ESOp:
        """Parse a report entry; a missing or ill-typed field is a ReportError naming it."""
        if not isinstance(data, Mapping):
            raise ReportError(f"ES op must be an object, got {data!r}")
        types = {"kind": str, "unit": str, "key": str, "seed": int, "generation": int}
        types |= {"sigma": float, "offspring": int, "lam": int, "clamp": float}
        values = {}
        for name, typ in types.items():
            if name not in data:
                raise ReportError(f"ES op lacks {name!r}: {dict(data)}")
            v = data[name]
            ok = isinstance(v, typ) and not isinstance(v, bool)
            if typ is float:
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                v = float(v) if ok else v
            if not ok:
                raise ReportError(f"ES op field {name!r} must be {typ.__name__}, got {v!r}")
            values[name] = v
        op = cls(**values)
        if op.kind not in KINDS:
            raise ReportError(f"ES op kind {op.kind!r} not in {', '.join(KINDS)}")
        if not (op.lam >= 1 and 0 <= op.offspring < op.lam and op.generation >= 0):
            raise ReportError(f"ES op has offspring/lam/generation out of range: {dict(data)}")
        if op.sigma <= 0 or op.clamp <= 0:
            raise ReportError(f"ES op needs sigma > 0 and clamp > 0: {dict(data)}")
        return op


@dataclass(frozen=True)
class SVDBasis:
    """SVD of ``W / max|W|`` with only the singular values above the cut-off (``S`` descending)."""

    U: Tensor  # (m, r)
    S: Tensor  # (r,)
    Vh: Tensor  # (r, n)

    @property
    def rank(self) -> int:
        return int(self.S.numel())

    def noise_std(self, sigma: float) -> float:
        """σ_s = σ · max(std(S), 1e-10): the std of the coefficient noise Δ."""
        std = float(self.S.std()) if self.rank > 1 else 0.0
        return float(sigma) * max(std, 1e-10)


def skip_reason(kind: str, master: Tensor) -> str | None:
    """Why ES cannot run on this tensor (None when it can)."""
    if master.ndim != 2:
        return f"{master.ndim}-D tensor (ES needs a 2-D weight)"
    if not torch.isfinite(master).all():
        return "tensor has non-finite values"
    if kind == "svd":
        if 1 in master.shape:
            return f"shape {tuple(master.shape)} has a 1 (no SVD structure to perturb)"
        if not bool((master != 0).any()):
            return "all-zero tensor"
    return None


@contextmanager
def _single_thread(device: torch.device):
    """One intra-op thread for the duration (CPU only).

    MKL's SVD gives different last bits with different thread counts, which would make a resume
    on another machine (or under another OMP_NUM_THREADS) replay a different tensor. One thread
    makes it a function of the input alone; it costs only the SVD (once per generation).
    """
    if device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def svd_basis(master: Tensor) -> SVDBasis:
    """SVD of the tensor normalised by its largest magnitude, keeping ``S > 1e-10``.

    On CPU the SVD runs on one thread, so the result does not depend on the thread count."""
    a = master / master.abs().max()
    with _single_thread(a.device):
        U, S, Vh = torch.linalg.svd(a, full_matrices=False)
    r = int((S > SVD_CUTOFF).sum())  # S is sorted descending
    return SVDBasis(U[:, :r], S[:r], Vh[:r])


def inverse_damping(S: Tensor) -> Tensor:
    """``a_k = sqrt(max S / (S_k + 1e-10))`` divided by its mean (so mean(a) = 1)."""
    a = torch.sqrt(S.max() / (S + EPS))
    return a / a.mean()


def _draw(generator: torch.Generator, lam: int, dim: int, std: float, device) -> Tensor:
    # always drawn on CPU in fp32, so the numbers do not depend on the tensor's device
    return (torch.randn(lam, dim, generator=generator, dtype=torch.float32) * std).to(device)


def _svd_log_noise(basis: SVDBasis, delta: Tensor, clamp: float) -> Tensor:
    a = inverse_damping(basis.S)
    return ((basis.U * (delta * a)) @ basis.Vh).clamp(-clamp, clamp)  # U·diag(Δ⊙a)·Vh


def svd_noise(
    master: Tensor, sigma: float, lam: int, generator: torch.Generator, clamp: float = 3.0
) -> Tensor:
    """The clamped log-noise ``(λ, m, n)`` of SVD-ES offspring (offspring = master ⊙ exp(noise))."""
    basis = svd_basis(master)
    delta = _draw(generator, lam, basis.rank, basis.noise_std(sigma), master.device)
    return torch.stack([_svd_log_noise(basis, d, clamp) for d in delta])


def svd_offspring(
    master: Tensor, sigma: float, lam: int, generator: torch.Generator, clamp: float = 3.0
) -> list[Tensor]:
    """All λ SVD-ES offspring of ``master`` (fp32). Memory: λ tensors; :func:`run_es` makes them one
    at a time instead."""
    basis = svd_basis(master)
    delta = _draw(generator, lam, basis.rank, basis.noise_std(sigma), master.device)
    return [master * torch.exp(_svd_log_noise(basis, d, clamp)) for d in delta]


def _norm_parts(master: Tensor) -> tuple[Tensor, Tensor]:
    norms = torch.linalg.vector_norm(master, dim=1)
    return master / (norms + EPS)[:, None], torch.log(norms + EPS)


def _norm_child(direction: Tensor, log_norm: Tensor, delta: Tensor) -> Tensor:
    return direction * torch.exp(log_norm + delta)[:, None]


def norm_offspring(
    master: Tensor, sigma: float, lam: int, generator: torch.Generator
) -> list[Tensor]:
    """All λ norm-ES offspring: rows keep their direction, row norms scale by ``exp(Δ_i)``."""
    direction, log_norm = _norm_parts(master)
    delta = _draw(generator, lam, master.shape[0], float(sigma), master.device)
    return [_norm_child(direction, log_norm, d) for d in delta]


class _Family:
    """The λ offspring of one generation, made one at a time (bit-identical on every call)."""

    def __init__(
        self,
        kind: str,
        elite: Tensor,
        seed: int,
        generation: int,
        sigma: float,
        lam: int,
        clamp: float,
        basis: SVDBasis | None = None,
    ) -> None:
        self.kind, self.elite, self.clamp = kind, elite, clamp
        gen = _generator(seed, generation)
        if kind == "svd":
            self.basis = basis if basis is not None else svd_basis(elite)
            self.scale = self.basis.noise_std(sigma)
            self.delta = _draw(gen, lam, self.basis.rank, self.scale, elite.device)
        else:
            self.direction, self.log_norm = _norm_parts(elite)
            self.scale = float(sigma)
            self.delta = _draw(gen, lam, elite.shape[0], self.scale, elite.device)

    def child(self, i: int) -> Tensor:
        if self.kind == "svd":
            return self.elite * torch.exp(_svd_log_noise(self.basis, self.delta[i], self.clamp))
        return _norm_child(self.direction, self.log_norm, self.delta[i])


def _check_master(master: Tensor) -> None:
    if not isinstance(master, Tensor) or master.dtype != torch.float32:
        got = getattr(master, "dtype", type(master).__name__)
        raise TypeError(f"ES works on an fp32 master copy of the tensor, got {got}")


def replay(op: ESOp, master: Tensor) -> Tensor:
    """Regenerate the offspring ``op`` accepted, from the elite it was drawn from (bit for bit).

    Ops of one tensor replay in order: ``master = replay(op, master)`` for each op of that tensor,
    starting from the fp32 copy of the tensor as it was before ES ran.
    """
    _check_master(master)
    if op.kind not in KINDS:
        raise ReportError(f"ES op kind {op.kind!r} not in {', '.join(KINDS)}")
    reason = skip_reason(op.kind, master)
    if reason is not None:
        raise ReportError(f"cannot replay ES op on {op.key or 'tensor'}: {reason}")
    if not 0 <= op.offspring < op.lam:
        raise ReportError(f"ES op offspring {op.offspring} not in range(lam={op.lam})")
    family = _Family(op.kind, master, op.seed, op.generation, op.sigma, op.lam, op.clamp)
    return family.child(op.offspring)


def no_regression_accept(
    epsilon: float = 0.0,
    datasets: Sequence[str] | None = None,
    baselines: Sequence[Metrics] = (),
) -> Callable[[Metrics, Metrics], bool]:
    """The acceptance rule: no dataset worse than the elite (nor any ``baselines``, e.g. the base
    model's metrics) beyond ``epsilon``, and at least one dataset strictly better than the elite.
    A trade-off (better here, worse beyond ε there) is rejected. Missing/None metrics are worst."""

    def accept(candidate: Metrics, elite: Metrics) -> bool:
        names = datasets if datasets is not None else sorted(elite)
        if degraded(candidate, elite, epsilon, names):
            return False
        if any(degraded(candidate, b, epsilon, names) for b in baselines):
            return False
        return bool(improved(candidate, elite, names))

    return accept


@dataclass
class ESBudget:
    """Limits on evaluations and wall-clock seconds, checked before every evaluation.

    Stateful: pass one object to several :func:`run_es` calls for a budget shared by all tensors, or
    a new one per tensor. The clock starts at the first ``run_es`` that uses it. ``clock`` is
    injectable (tests pass a fake one).

    Under several processes that evaluate together (each scoring a slice of the samples), clocks
    differ, so "out of time" must be one decision: pass ``agree``, a function that combines the
    local flag across processes (e.g. an all-reduce MAX) and returns the common answer. The
    evaluation limit needs no agreement (every process counts the same evaluations).
    """

    max_evaluations: int | None = None
    max_seconds: float | None = None
    clock: Callable[[], float] = time.monotonic
    agree: Callable[[bool], bool] | None = None
    evaluations: int = 0
    started: float | None = None

    def start(self) -> None:
        if self.started is None:
            self.started = self.clock()

    def exhausted(self) -> str | None:
        """``"evaluations"`` or ``"seconds"`` when a limit is reached, else None."""
        if self.max_evaluations is not None and self.evaluations >= self.max_evaluations:
            return "evaluations"
        if self.max_seconds is not None:
            self.start()
            late = self.clock() - self.started >= self.max_seconds
            if self.agree is not None:
                late = bool(self.agree(late))
            if late:
                return "seconds"
        return None


@dataclass
class ESResult:
    """What one :func:`run_es` call did.

    ``master``: the final elite (fp32; the model holds it too); ``ops``: the accepted steps, in
    order; ``metrics``: the elite's metrics; ``evaluations``: evaluate() calls made; ``skipped``:
    why ES did not run (None when it did); ``stopped``: ``"generations"``, ``"evaluations"`` or
    ``"seconds"``; ``sigma``: the step size after the last generation; ``history``: one record
    per generation (σ, noise std, λ, evaluated, accepted, winner) for the report.
    """

    master: Tensor
    ops: list[ESOp]
    metrics: dict
    evaluations: int = 0
    skipped: str | None = None
    stopped: str = "generations"
    sigma: float = 0.0
    history: list[dict] = field(default_factory=list)


def _next_sigma(
    kind: str, rule: str, sigma: float, sigma0: float, accepted: int, evaluated: int
) -> float:
    if rule == "one_fifth":
        p = accepted / evaluated if evaluated else 0.0
        return sigma * math.exp((p - 0.2) / 0.8)
    if not accepted:
        return sigma
    return 0.8 * sigma0 if kind == "svd" else 0.9 * sigma


def _write_child(write: Callable[[Tensor], None], family: _Family, index: int) -> None:
    write(family.child(index))


def run_es(
    kind: Literal["svd", "norm"],
    master: Tensor,
    write: Callable[[Tensor], None],
    evaluate: Callable[[], Metrics],
    current: Metrics,
    accept: Callable[[Metrics, Metrics], bool],
    *,
    seed: int,
    sigma0: float,
    generations: int = 1,
    lam: int | None = None,
    step_rule: Literal["one_fifth", "fixed"] = "one_fifth",
    budget: ESBudget | None = None,
    clamp: float = 3.0,
    unit: str = "",
    key: str = "",
    selection: str = "copeland",
    datasets: Sequence[str] | None = None,
    on_evaluated: Callable[[int, int, Metrics, bool], None] | None = None,
    evaluate_group: Callable[
        [Sequence[Callable[[], object]], Callable[[], object]], Sequence[Metrics]
    ]
    | None = None,
    group_size: int = 1,
) -> ESResult:
    """(1+λ)-ES on one tensor. ``master`` (fp32, not modified) must be what the model holds now and
    ``current`` its metrics; ``seed`` is the per-tensor seed (see :func:`tensor_seed`).

    All or nothing: on return the model holds ``result.master`` (``write`` was called with it, or
    never called when nothing was evaluated), which equals replaying ``result.ops`` from ``master``.
    If ``evaluate``/``accept`` raises, ``write(master)`` restores the tensor as it was before the
    call and the exception propagates (steps accepted earlier in this call are dropped with it,
    since the caller never learns their ops). ``on_evaluated(generation, index, metrics, accepted)``
    is called after each evaluation (progress bars).

    ``evaluate_group(appliers, restore)`` with ``group_size`` > 1: the offspring of a generation
    are evaluated up to ``group_size`` at a time (``appliers[j]()`` writes offspring ``j``,
    ``restore()`` writes the elite back once per group; see
    :meth:`olmokit.merge.evaluate.Evaluator.evaluate_group`, which shares the work above the
    tensor's layer among them). Everything else is as one by one: the same offspring, the same
    acceptance and selection, the same σ and ops. The evaluation budget cuts a group to what is
    left of it; the seconds budget is checked before each group.
    """
    _check_master(master)
    if kind not in KINDS:
        raise ConfigError(f"ES kind {kind!r} not in {', '.join(KINDS)}")
    if step_rule not in STEP_RULES:
        raise ConfigError(f"ES step rule {step_rule!r} not in {', '.join(STEP_RULES)}")
    if selection not in METHODS:
        raise ConfigError(f"selection {selection!r} not in {', '.join(METHODS)}")
    if not (math.isfinite(sigma0) and sigma0 > 0) or not (math.isfinite(clamp) and clamp > 0):
        raise ValueError(f"sigma0 and clamp must be finite and > 0, got {sigma0}, {clamp}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if generations < 0 or (lam is not None and lam < 1):
        raise ValueError(f"generations must be >= 0 and lam >= 1, got {generations}, {lam}")
    budget = budget if budget is not None else ESBudget()
    budget.start()
    names = list(datasets) if datasets is not None else sorted(current)
    result = ESResult(master=master, ops=[], metrics=dict(current), sigma=float(sigma0))
    reason = skip_reason(kind, master)
    if reason is not None or generations == 0:
        result.skipped = reason or "no generations"
        return result

    elite, elite_metrics, sigma = master.clone(), dict(current), float(sigma0)
    basis = svd_basis(elite) if kind == "svd" else None
    if lam is None:
        lam = default_lambda(basis.rank if basis is not None else elite.shape[0])
    written = False  # whether the model holds something other than `master`
    finished = False
    try:
        for g in range(generations):
            family = _Family(kind, elite, seed, g, sigma, lam, clamp, basis)
            evaluated: list[tuple[int, Metrics]] = []
            passed: list[tuple[int, Metrics]] = []
            i = 0
            while i < lam:
                stop = budget.exhausted()
                if stop is not None:
                    result.stopped = stop
                    break
                size = group_size if evaluate_group is not None else 1
                if budget.max_evaluations is not None:
                    size = min(size, budget.max_evaluations - budget.evaluations)
                indices = range(i, min(i + max(size, 1), lam))
                written = True
                if len(indices) == 1:
                    write(family.child(i))
                    group = [evaluate()]
                else:
                    group = evaluate_group(
                        [functools.partial(_write_child, write, family, c) for c in indices],
                        functools.partial(write, elite),
                    )
                budget.evaluations += len(indices)
                result.evaluations += len(indices)
                for c, got in zip(indices, group):
                    metrics = dict(got)
                    ok = bool(accept(metrics, elite_metrics))
                    evaluated.append((c, metrics))
                    if ok:
                        passed.append((c, metrics))
                    if on_evaluated is not None:
                        on_evaluated(g, c, metrics, ok)
                i = indices.stop
            record = {"generation": g, "sigma": sigma, "noise_std": family.scale, "lam": lam}
            record |= {"evaluated": len(evaluated), "accepted": len(passed), "winner": None}
            if passed:
                choice = select(selection, [m for _, m in passed], names)
                index, metrics = passed[choice.winner]
                elite, elite_metrics = family.child(index), metrics
                result.ops.append(
                    ESOp(kind, unit, key, int(seed), g, sigma, index, lam, float(clamp))
                )
                record["winner"] = index
                if kind == "svd" and g + 1 < generations:
                    basis = svd_basis(elite)  # the elite moved: recompute its SVD
            result.history.append(record)
            if evaluated:  # a generation cut short before any evaluation leaves σ alone
                sigma = _next_sigma(kind, step_rule, sigma, sigma0, len(passed), len(evaluated))
            if result.stopped != "generations":
                break
        finished = True
    finally:
        if written:
            write(elite if finished else master)
    result.master, result.metrics, result.sigma = elite, elite_metrics, sigma
    return result
