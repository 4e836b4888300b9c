"""OLM-style model merging: pick, per layer and per parameter unit, the pool model whose weights
score best on a set of evaluation datasets, then optionally refine the chosen tensors with a
(1+lambda) evolution strategy.

Layout (imports run one way, top to bottom): ``config`` (the run's settings), ``pool`` (lazy,
memory-mapped donor tensors), ``datasets`` (evaluation sets, tokenised once), ``evaluate`` (per-dataset
metrics from :mod:`olmokit.eval.merge_metrics`, split across processes), then the search, report,
``run.run_merge`` and the CLI. Kept import-light: import submodules for their contents.
"""
