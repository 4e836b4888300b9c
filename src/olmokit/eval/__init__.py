"""Scoring a causal LM: the one place in olmokit that turns logits into log-probabilities.

Where to start:

* :mod:`~olmokit.eval.nll`: per-token and mean next-token NLL with label masking (``-100``), at the
  logits level (differentiable) and the model level (:func:`sequence_nll`); everything below
  builds on it.
* :mod:`~olmokit.eval.choices`: log-likelihood multiple choice (:func:`choice_logprobs`,
  :func:`mc_accuracy`), with a shared-prompt KV-cache scorer.
* :mod:`~olmokit.eval.generation`: :func:`greedy_generate` (batched, KV-cached, records the chosen
  token's probability) and :func:`exact_match`.
* :mod:`~olmokit.eval.merge_metrics`: the OLM merge's ``bigram_loss``, ``exact_match_score``,
  ``diversity`` and ``response_nll``, all lower-is-better, per sample; :func:`merge_metric` picks
  one by the merge config's ``mode`` name.
* :mod:`~olmokit.eval.modes`: :func:`eval_mode`, which every scorer runs under and which restores
  the previous train/eval flags even when scoring raises.

Every scorer is checked against a slow float64 per-position loop in ``tests/eval``.
"""

from .choices import choice_logprobs, mc_accuracy
from .examples import evaluate_examples
from .generation import (
    GreedyOutput,
    exact_match,
    greedy_generate,
    prompt_text,
    sample_text,
    stop_token_ids,
)
from .merge_metrics import (
    DIVERSITY_SCALE,
    MERGE_METRICS,
    ContextResponse,
    bigram_loss,
    diversity,
    diversity_score,
    exact_match_score,
    merge_metric,
    response_nll,
)
from .modes import eval_mode, model_device
from .nll import (
    IGNORE_INDEX,
    label_mask,
    log_probs,
    mean_nll,
    mean_sequence_nll,
    sequence_nll,
    token_logprobs,
    token_nll,
)
from .scripts import SCRIPT_RANGES, SCRIPTS, script_of, scripts_in, uses_script

__all__ = [  # sorted, as ruff's RUF022 orders it
    "DIVERSITY_SCALE",
    "IGNORE_INDEX",
    "MERGE_METRICS",
    "SCRIPTS",
    "SCRIPT_RANGES",
    "ContextResponse",
    "GreedyOutput",
    "bigram_loss",
    "choice_logprobs",
    "diversity",
    "diversity_score",
    "eval_mode",
    "evaluate_examples",
    "exact_match",
    "exact_match_score",
    "greedy_generate",
    "label_mask",
    "log_probs",
    "mc_accuracy",
    "mean_nll",
    "mean_sequence_nll",
    "merge_metric",
    "model_device",
    "prompt_text",
    "response_nll",
    "sample_text",
    "script_of",
    "scripts_in",
    "sequence_nll",
    "stop_token_ids",
    "token_logprobs",
    "token_nll",
    "uses_script",
]
