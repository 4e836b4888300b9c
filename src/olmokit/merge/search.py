"""The merge search: base selection, pool pre-selection, boundary, layers, units, ES refinement.

Every step has the same shape (:meth:`MergeSearch.step`):

1. the candidates are the *current* state of the step's units (always first) and every pool member
   whose weights for those units differ from it;
2. each candidate is looked up in the evaluation cache by its state key, or applied in place
   (:class:`~olmokit.merge.state.WorkingModel`, each over the previous one) and evaluated with the
   step's other new candidates (grouped: their layers above the step's layer run as one batch,
   :meth:`olmokit.merge.evaluate.Evaluator.evaluate_group`), then the units are restored once
   from a copy of just them;
3. a candidate worse than the current metrics on any dataset beyond ``epsilon`` (and, with
   ``improve_against: current_and_base``, worse than the base's) is rejected; the current state is
   never rejected, so the selected state is never worse than the current one beyond ``epsilon``
   (with ``epsilon: 0``, never worse at all; the original applied its "best" candidate even when
   every candidate had degraded the model);
4. the winner among the rest is chosen by ``selection`` (Copeland by default; ties go to the current
   state, then pool order — see :mod:`olmokit.merge.select`) and applied;
5. in the unit step, the ES variants that are enabled refine the unit's 2-D weight; every accepted ES
   step is recorded as a replayable :class:`~olmokit.merge.es.ESOp`;
6. the decision goes into the report, which is written atomically before the next step starts.

Base selection (``base_select``) and pre-selection (``max_models``) rank whole pool models: each
member's every unit is copied into the working model tensor by tensor from its lazy donor, so even
then no donor is ever materialised as a model. They use Borda over the datasets (as the original).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

from ..family import ParameterUnit
from . import es as es_mod
from .evaluate import any_process
from .report import decisions
from .select import degraded, select
from .state import WorkingModel, unit_source

__all__ = ["Candidate", "MergeSearch", "clean_metrics", "replay_decisions"]

Metrics = dict[str, float | None]


def clean_metrics(metrics: Mapping[str, Any], datasets: Sequence[str]) -> Metrics:
    """One float per dataset, in dataset order; a non-finite or missing value becomes ``None``."""
    out: Metrics = {}
    for d in datasets:
        v = metrics.get(d)
        v = None if v is None else float(v)
        out[d] = v if v is not None and math.isfinite(v) else None
    return out


@dataclass
class Candidate:
    name: str  #: pool member, or the current state's source
    current: bool
    metrics: Metrics
    cached: bool = False
    degraded: list[str] = field(default_factory=list)
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "current": self.current,
            "metrics": self.metrics,
            "cached": self.cached,
            "degraded": self.degraded,
            "reason": self.reason,
        }


def es_weight_key(working: WorkingModel, unit: ParameterUnit) -> str | None:
    """The unit's 2-D weight (ES skips 1-D tensors and any shape with a 1, as the original)."""
    for key in unit.keys:
        if key.endswith("weight"):
            t = working.tensor(key)
            if t.dim() == 2 and min(t.shape) > 1:
                return key
    return None


class MergeSearch:
    """Runs the steps the config enables, skipping those the report already holds (resume)."""

    def __init__(
        self,
        working: WorkingModel,
        config: Any,
        evaluate: Callable[[], Mapping[str, Any]],
        cache: Any,
        report: dict[str, Any],
        save: Callable[[], None],
        members: Sequence[str],
        progress: bool = True,
        focus: Callable[[int | None], None] | None = None,
        evaluate_group: GroupEvaluate | None = None,
    ):
        self.working = working
        self.config = config
        self._evaluate = evaluate
        self.cache = cache
        self.report = report
        self._save = save
        self.members = list(members)
        self.progress = progress
        self.datasets = list(config.dataset_names)
        self.current: Metrics = dict(report.get("base_metrics") or {})
        self._bar: Any = None
        #: tells the evaluator the first layer a step's candidates differ in (its prefix cache)
        self._focus = focus or (lambda layer: None)
        #: scores several candidates of one step together (Evaluator.evaluate_group); by default
        #: one after the other with ``evaluate``
        self._evaluate_group = evaluate_group or _one_by_one(evaluate)
        self.candidate_batch = int(getattr(config, "candidate_batch", 1) or 1)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> Metrics:
        return clean_metrics(self._evaluate(), self.datasets)

    def evaluate_group(
        self, appliers: Sequence[Callable[[], Any]], restore: Callable[[], Any]
    ) -> list[Metrics]:
        """Metrics of the candidates the ``appliers`` put in place (``restore`` puts the current
        state back, once, also on failure): see
        :meth:`olmokit.merge.evaluate.Evaluator.evaluate_group`."""
        if not appliers:
            return []
        return [clean_metrics(m, self.datasets) for m in self._evaluate_group(appliers, restore)]

    def cached_evaluate(self, key: str) -> tuple[Metrics, bool]:
        hit = self.cache.get(key)
        if hit is not None:
            return dict(hit), True
        metrics = self.evaluate()
        self.cache.put(key, metrics)
        return metrics, False

    def save(self) -> None:
        self.report["cache"] = {"hits": self.cache.hits, "misses": self.cache.misses}
        self._save()

    def _next_sequence(self) -> int:
        self.report["sequence"] = int(self.report.get("sequence", 0)) + 1
        return self.report["sequence"]

    # ------------------------------------------------------------------ plan
    def layer_order(self) -> list[int]:
        order = list(range(self.working.num_layers))
        return order[::-1] if self.config.direction == "backward" else order

    def unit_order(self) -> list[ParameterUnit]:
        units = self.working.searchable_units(self.config.skip_norm)
        if self.config.direction == "backward":
            # the forward order reversed by layer: lm_head and the final norm, then the layers
            # last to first (each layer's units in their usual order), embed_tokens last
            units = sorted(
                units,
                key=lambda u: (
                    -(
                        u.layer
                        if u.layer is not None
                        else (-1 if u.role == "embed_tokens" else 10**9)
                    )
                ),
            )
        return units

    def first_layer(self, units: Sequence[ParameterUnit]) -> int | None:
        """The first decoder layer a step over ``units`` can change: a layer unit's own layer,
        ``num_layers`` for the final norm and an untied lm_head (only they run above the last
        layer), ``None`` for the embedding and anything else (the whole model)."""
        n = self.working.num_layers
        starts = [
            u.layer
            if u.layer is not None
            else (n if u.role in ("final_norm", "lm_head") and u.tied_to is None else None)
            for u in units
        ]
        if not starts or None in starts:
            return None
        return min(s for s in starts if s is not None)

    def pending(self) -> list[tuple[str, Any]]:
        """The steps still to do, in order: ("base"|"preselect"|"boundary"|"layer"|"unit", target)."""
        c, r = self.config, self.report
        steps: list[tuple[str, Any]] = []
        if c.base_select and not r.get("base_selection"):
            steps.append(("base", None))
        if c.max_models and not r.get("preselection"):
            steps.append(("preselect", None))
        if c.boundary_select and not r.get("boundary"):
            steps.append(("boundary", None))
        if c.layer_swap:
            steps += [("layer", i) for i in self.layer_order() if str(i) not in r["layers"]]
        if c.tensor_swap:
            steps += [("unit", u) for u in self.unit_order() if u.name not in r["units"]]
        return steps

    # ------------------------------------------------------------------ driver
    def run(self) -> None:
        steps = self.pending()
        bar = _bar(len(steps), "merge steps", self.progress, position=0)
        try:
            for kind, target in steps:
                bar.set_postfix_str(f"{kind} {target.name if kind == 'unit' else target or ''}")
                self._focus(None)  # whole-model steps; step() narrows it
                if kind == "base":
                    self.select_base()
                elif kind == "preselect":
                    self.preselect()
                elif kind == "boundary":
                    self.step("boundary", "boundary", self.working.boundary_units())
                elif kind == "layer":
                    self.step("layer", str(target), self.working.layer_units(target))
                else:
                    self.step("unit", target.name, [target], es=True)
                bar.update(1)
        finally:
            bar.close()

    # ------------------------------------------------------------------ whole-model ranking
    def _all_units(self) -> list[ParameterUnit]:
        return [u for u in self.working.units.values() if u.tied_to is None]

    def _member_metrics(self, names: Sequence[str]) -> dict[str, Metrics]:
        """Full evaluation of each named pool member (its every unit copied in, tensor by tensor).
        The working model holds the last one afterwards; the caller re-applies what it wants."""
        units = self._all_units()
        out: dict[str, Metrics] = {}
        bar = _bar(len(names), "pool models", self.progress, position=1)
        try:
            for name in names:
                if name == self.working.base and not self.working.overrides:
                    out[name] = self.base_metrics()
                else:
                    self.working.apply_all(units, name)
                    out[name] = self.evaluate()
                bar.update(1)
        finally:
            bar.close()
        return out

    def base_metrics(self) -> Metrics:
        """The base's metrics (evaluated once; the empty-override state in the cache)."""
        if self.report.get("base_metrics"):
            return dict(self.report["base_metrics"])
        key = self.working.state_key()
        metrics, _ = self.cached_evaluate(key)
        return metrics

    def select_base(self) -> None:
        """Rank every pool model by Borda over the datasets; the winner becomes the base."""
        t0 = time.perf_counter()
        initial = self.working.base
        names = [initial, *[m for m in self.members if m != initial]]
        metrics = self._member_metrics(names)
        scores = [metrics[n] for n in names]
        sel = select("borda", scores, self.datasets)
        winner = names[sel.winner]
        units = self._all_units()
        if any(self.working.source(u) != winner for u in units):
            self.working.apply_all(units, winner)
        self.working.rebase(winner)
        self.report["base"] = winner
        self.report["base_metrics"] = metrics[winner]
        self.cache.put(self.working.state_key(), metrics[winner])
        self.current = dict(metrics[winner])
        self.report["member_metrics"] = metrics
        self.report["base_selection"] = {
            "step": "base",
            "target": "base",
            "sequence": self._next_sequence(),
            "units": [],
            "current": initial,
            "winner": winner,
            "changed": winner != initial,
            "candidates": [Candidate(n, n == initial, metrics[n]).to_json() for n in names],
            "selection": {"candidates": list(range(len(names))), **sel.to_json()},
            "es": [],
            "metrics": metrics[winner],
            "seconds": time.perf_counter() - t0,
            "finished": _now(),
        }
        self.save()

    def preselect(self) -> None:
        """Keep the base and the ``max_models - 1`` best other members (Borda over datasets)."""
        base = self.working.base
        names = [base, *[m for m in self.members if m != base]]
        known = self.report.get("member_metrics") or {}
        todo = [n for n in names if n not in known]
        metrics = dict(known)
        if todo:
            metrics.update(self._member_metrics(todo))
            self.working.apply_all(self._all_units(), base)
            self.working.rebase(base)
        scores = [metrics[n] for n in names]
        sel = select("borda", scores, self.datasets)
        ranked = [names[i] for i in sel.order if names[i] != base]
        keep = {base, *ranked[: max(self.config.max_models - 1, 0)]}
        kept = [n for n in self.members if n in keep]
        self.report["member_metrics"] = metrics
        self.report["preselection"] = {
            "sequence": self._next_sequence(),
            "kept": kept,
            "dropped": [n for n in self.members if n not in keep],
            "borda": {n: sel.borda[i] for i, n in enumerate(names)},
        }
        self.members = kept
        self.save()

    # ------------------------------------------------------------------ one step
    def step(self, step: str, target: str, units: list[ParameterUnit], es: bool = False) -> dict:
        t0 = time.perf_counter()
        w, cfg = self.working, self.config
        if not self.current:
            self.current = self.base_metrics()
            self.report["base_metrics"] = dict(self.current)
        self._focus(self.first_layer(units))
        sources = {w.source(u) for u in units}
        current_name = sources.pop() if len(sources) == 1 else "current"
        # the current state is a candidate: its metrics are known (the cache has them, or, right
        # after a resume, the report), so it is never evaluated again
        key = w.state_key()
        known = self.cache.get(key)
        if known is None:
            self.cache.put(key, dict(self.current))
        candidates = [Candidate(current_name, True, dict(self.current), cached=known is not None)]
        donors = [m for m in self.members if any(w.source(u) != m for u in units)]
        bar = _bar(len(donors), f"{step} {target}", self.progress, position=1)
        try:
            found = self._trials(units, donors, bar)
        finally:
            bar.close()
        for member in donors:
            metrics, cached = found[member]
            cand = Candidate(member, False, metrics, cached)
            self._judge(cand)
            candidates.append(cand)
        eligible = [i for i, c in enumerate(candidates) if not c.degraded]
        sel = select(cfg.selection, [candidates[i].metrics for i in eligible], self.datasets)
        win = candidates[eligible[sel.winner]]
        if not win.current:
            w.apply_all(units, win.name)
        self.current = dict(win.metrics)
        es_ops: list[dict[str, Any]] = []
        if es and (cfg.es_svd or cfg.es_norm):
            es_ops = self.refine(units[0], win.name)
        decision = {
            "step": step,
            "target": target,
            "sequence": self._next_sequence(),
            "units": [u.name for u in units],
            "current": current_name,
            "winner": win.name,
            "changed": not win.current,
            "candidates": [c.to_json() for c in candidates],
            "selection": {"candidates": eligible, **sel.to_json()},
            "es": es_ops,
            "metrics": dict(self.current),
            "seconds": time.perf_counter() - t0,
            "finished": _now(),
        }
        if step == "boundary":
            self.report["boundary"] = decision
        elif step == "layer":
            self.report["layers"][target] = decision
        else:
            self.report["units"][target] = decision
        self.save()
        return decision

    def _trials(
        self, units: list[ParameterUnit], donors: Sequence[str], bar: Any
    ) -> dict[str, tuple[Metrics, bool]]:
        """Every donor's metrics for ``units``: ``(metrics, cached)``. States already in the
        evaluation cache are looked up; the others are evaluated together (:meth:`evaluate_group`:
        each donor's tensors copied in over the previous one's, the evaluator sharing work among
        ``candidate_batch`` of them at a time, and the current state of the units restored once
        at the end from one snapshot of them, exceptions included), then cached."""
        w = self.working
        found: dict[str, tuple[Metrics, bool]] = {}
        todo: list[tuple[str, str]] = []
        for member in donors:
            key = w.state_key({u.name: member for u in units})
            hit = self.cache.get(key)
            if hit is not None:
                found[member] = (dict(hit), True)
                bar.update(1)
            else:
                todo.append((member, key))
        if not todo:
            return found
        snap = w.snapshot(units)  # the current state of the step's units, copied once
        ticked: set[str] = set()

        def apply(member: str) -> None:
            w.apply_all(units, member)
            if member not in ticked:  # the bar counts candidates (a wave re-applies them)
                ticked.add(member)
                bar.update(1)

        appliers = [functools.partial(apply, member) for member, _ in todo]
        try:
            # each apply maps its donor's file once and unmaps it after (keeping every donor of
            # the step mapped would make the peak grow with the pool)
            results = self.evaluate_group(appliers, functools.partial(w.restore, snap))
        finally:
            w.release(snap)  # restored by evaluate_group; its buffers serve the next step
        for (member, key), metrics in zip(todo, results):
            self.cache.put(key, metrics)
            found[member] = (metrics, False)
        return found

    def _references(self) -> list[tuple[str, Metrics]]:
        refs = [("current", self.current)]
        if self.config.improve_against == "current_and_base":
            refs.append(("base", dict(self.report.get("base_metrics") or {})))
        return refs

    def _judge(self, cand: Candidate) -> None:
        """Mark a candidate degraded (and why) against the current metrics (and the base's)."""
        eps = self.config.epsilon
        bad: list[str] = []
        reasons = []
        for label, ref in self._references():
            worse = degraded(cand.metrics, ref, eps, self.datasets)
            if worse:
                reasons.append(f"worse than {label} beyond epsilon={eps:g} on {', '.join(worse)}")
                bad += [d for d in worse if d not in bad]
        nulls = [d for d in self.datasets if cand.metrics.get(d) is None]
        if nulls:
            reasons.insert(0, f"non-finite metric (null) on {', '.join(nulls)}")
        cand.degraded = bad
        cand.reason = "; ".join(reasons) or None

    # ------------------------------------------------------------------ ES
    def refine(self, unit: ParameterUnit, member: str) -> list[dict[str, Any]]:
        """SVD-ES then norm-ES (those enabled) on the unit's 2-D weight; returns the accepted ops.

        Each kind starts from the model's weight in fp32 (the master copy) and ends with the elite
        written back in the model's dtype; :func:`replay_decisions` repeats exactly that."""

        key = es_weight_key(self.working, unit)
        if key is None:
            return []
        cfg = self.config
        weight = self.working.tensor(key)
        baselines = []
        if cfg.improve_against == "current_and_base":
            baselines.append(dict(self.report.get("base_metrics") or {}))
        accept = es_mod.no_regression_accept(cfg.epsilon, self.datasets, baselines)
        ops: list[dict[str, Any]] = []
        kinds = [k for k, on in (("svd", cfg.es_svd), ("norm", cfg.es_norm)) if on]
        for kind in kinds:
            master = weight.detach().float().clone()

            def write(t: torch.Tensor, _w: torch.Tensor = weight) -> None:
                with torch.no_grad():
                    _w.copy_(t)

            generations = cfg.es_svd_generations if kind == "svd" else cfg.es_norm_generations
            # offspring per generation (the SVD rank may come out lower: the bar is for the ETA)
            lam = cfg.es_lambda or es_mod.default_lambda(
                min(weight.shape) if kind == "svd" else weight.shape[0]
            )
            bar = _bar(generations * lam, f"{kind}-ES {unit.name}", self.progress, position=1)
            result = es_mod.run_es(
                kind,
                master,
                write,
                self.evaluate,
                dict(self.current),
                accept,
                seed=es_mod.tensor_seed(cfg.seed, kind, key),
                sigma0=cfg.es_svd_sigma if kind == "svd" else cfg.es_norm_sigma,
                generations=generations,
                lam=cfg.es_lambda,
                step_rule=cfg.es_svd_step_rule if kind == "svd" else cfg.es_norm_step_rule,
                # under several processes 'out of time' is one decision (clocks differ by rank)
                budget=es_mod.ESBudget(
                    cfg.es_max_evaluations, cfg.es_max_seconds, agree=any_process
                ),
                clamp=cfg.es_noise_clamp,
                unit=unit.name,
                key=key,
                selection=cfg.selection,
                datasets=self.datasets,
                on_evaluated=lambda *_, _b=bar: _b.update(1),
                evaluate_group=self.evaluate_group,
                group_size=self.candidate_batch,
            )
            bar.close()
            ops += [op.to_json() for op in result.ops]
            if result.ops:
                self.current = clean_metrics(result.metrics, self.datasets)
        if ops:
            self.working.set_source(unit, unit_source(member, ops))
            self.cache.put(self.working.state_key(), dict(self.current))
        return ops


GroupEvaluate = Callable[
    [Sequence[Callable[[], Any]], Callable[[], Any]], Sequence[Mapping[str, Any]]
]


def _one_by_one(evaluate: Callable[[], Mapping[str, Any]]) -> GroupEvaluate:
    """A group evaluation that applies and evaluates each candidate in turn, then restores."""

    def group(
        appliers: Sequence[Callable[[], Any]], restore: Callable[[], Any]
    ) -> list[Mapping[str, Any]]:
        out = []
        try:
            for apply in appliers:
                apply()
                out.append(evaluate())
        finally:
            restore()
        return out

    return group


def replay_decisions(
    working: WorkingModel, report: Mapping[str, Any]
) -> tuple[list[str] | None, Metrics]:
    """Rebuild the working state from a report: base selection, every decision's winner, every
    recorded ES op (replayed in order, bit for bit). Returns the pre-selected pool (or None) and
    the metrics of the state reached (the last decision's)."""

    all_units = [u for u in working.units.values() if u.tied_to is None]
    base = report["base"]
    if base != working.base:
        working.apply_all(all_units, base)
        working.rebase(base)
    members = (report.get("preselection") or {}).get("kept")
    metrics: Metrics = dict(report.get("base_metrics") or {})
    for d in _decisions(report):
        if d["step"] == "base":
            continue
        units = [working.unit(u) for u in d["units"]]
        for u in units:
            if working.source(u) != d["winner"]:
                working.apply(u, d["winner"])
        if d.get("es"):
            _replay_es(working, d["es"], es_mod)
            working.set_source(units[0], unit_source(d["winner"], d["es"]))
        metrics = dict(d.get("metrics") or {})
    return members, metrics


def _replay_es(working: WorkingModel, ops: Sequence[Mapping[str, Any]], es_mod: Any) -> None:
    """Apply recorded ES ops: each run of same-kind ops starts from the model's weight in fp32
    (as the search did) and writes its final master back, cast to the model's dtype."""
    i = 0
    while i < len(ops):
        kind, key = ops[i]["kind"], ops[i]["key"]
        weight = working.tensor(key)
        master = weight.detach().float().clone()
        while i < len(ops) and ops[i]["kind"] == kind and ops[i]["key"] == key:
            master = es_mod.replay(es_mod.ESOp.from_json(ops[i]), master)
            i += 1
        with torch.no_grad():
            weight.copy_(master)


def _decisions(report: Mapping[str, Any]) -> list[dict[str, Any]]:

    return list(decisions(report))


def _bar(total: int, desc: str, enabled: bool, position: int = 0) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=position == 0, position=position)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
