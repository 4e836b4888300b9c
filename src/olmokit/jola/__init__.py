"""JoLA — joint localization and activation editing — for OLMo v1/2/3.

Per attention head h of each edited layer: z'_h = (1 + g2_h·A_h) ⊙ z_h + g1_h·v_h on the input of
``o_proj``, with HardConcrete gates g1 (additive) and g2 (multiplicative). L·H·(2·head_dim + 2)
trainable parameters. Start with :func:`attach_jola` (any loaded OLMo model) or the seed-style
``JoLAOlmo2Model.jola_from_pretrained(...)``, train with :class:`JoLATrainer` or :func:`run_jola`
(a whole config into a resumable run directory; :func:`train_jola` returns its summary dict),
then :func:`save_jola` / :func:`load_jola`, :func:`merge_jola` (exact fold into plain HF weights),
:func:`write_report` (which heads are open), :func:`open_heads` / :func:`prune_jola` (count and
hard-close heads) and :func:`sweep_jola` (accuracy against open heads over a ``gate_lambda`` grid).
See ``docs/jola.md``.
"""

from ..eval import choice_logprobs, evaluate_examples, exact_match, mc_accuracy
from .checkpoint import load_jola, merge_jola, read_adapter, save_jola, save_merged
from .config import DataSection, JoLAConfig, JoLASettings, ModelSection, TrainingSection
from .data import encode_for_training, to_records
from .layer import HardConcrete, JoLAEdit, expected_gate, hard_gate, prob_open, sample_gate
from .model import (
    attach_jola,
    detach_jola,
    disable_jola,
    has_jola,
    jola_edits,
    jola_parameter_count,
    jola_parameters,
    jola_state_dict,
    num_jola_parameters,
    set_gate_mode,
    unfreeze_jola_params,
)
from .pretrained import JoLAModel, JoLAOlmo2Model, JoLAOlmo3Model, JoLAOlmoModel
from .report import GateReport, gate_report, write_report
from .run import load_run_data, prune_adapter, run_jola, train_jola
from .schedulers import SCHEDULERS, GateScheduler, make_scheduler
from .sparsity import head_gates, open_heads, prune_jola
from .sweep import sweep_jola
from .train import JoLATrainer, TrainingDivergedError, gate_penalty, training_arguments

__all__ = [
    "DataSection",
    "GateReport",
    "GateScheduler",
    "HardConcrete",
    "JoLAConfig",
    "JoLAEdit",
    "JoLAModel",
    "JoLAOlmo2Model",
    "JoLAOlmo3Model",
    "JoLAOlmoModel",
    "JoLASettings",
    "JoLATrainer",
    "ModelSection",
    "SCHEDULERS",
    "TrainingDivergedError",
    "TrainingSection",
    "attach_jola",
    "choice_logprobs",
    "detach_jola",
    "encode_for_training",
    "disable_jola",
    "evaluate_examples",
    "exact_match",
    "expected_gate",
    "gate_penalty",
    "gate_report",
    "hard_gate",
    "head_gates",
    "has_jola",
    "jola_edits",
    "jola_parameter_count",
    "jola_parameters",
    "jola_state_dict",
    "load_jola",
    "load_run_data",
    "make_scheduler",
    "mc_accuracy",
    "merge_jola",
    "num_jola_parameters",
    "open_heads",
    "prob_open",
    "prune_adapter",
    "prune_jola",
    "read_adapter",
    "run_jola",
    "sample_gate",
    "save_jola",
    "save_merged",
    "set_gate_mode",
    "sweep_jola",
    "to_records",
    "train_jola",
    "training_arguments",
    "unfreeze_jola_params",
    "write_report",
]
