"""JoLA configuration: the seed's three-section YAML shape, strict, with olmokit's defaults.

A JoLA run is described by one YAML file with the sections of seed 000's ``config_olmo2.yaml``::

    model_config:     which base model and where the edit goes
    training_config:  Hugging Face ``Trainer`` settings (lr, batch size, epochs, early stopping, bf16)
    jola_config:      gate hyper-parameters, gate scheduler, penalty form and strength
    data_config:      (olmokit addition) training/evaluation data; defaults to the built-in task

Every section rejects unknown keys with an error listing the valid ones. Defaults follow the reference
implementation's low-resource protocol (200 training / 200 validation examples, lr 5e-3, cosine with 50
warm-up steps, batch 8, 20 epochs, early stopping with patience 2, ``expon`` gate scheduler), except
where the reference is defective (see ``docs/jola.md``).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ..config import OlmokitConfig
from ..errors import ConfigError
from ..zoo.registry import DEFAULT_MODEL

__all__ = [
    "JoLAConfig",
    "JoLASettings",
    "ModelSection",
    "TrainingSection",
    "DataSection",
]


class ModelSection(OlmokitConfig):
    """Base model and edit site (``model_config`` in the YAML)."""

    pretrained_model_name_or_path: str = Field(
        DEFAULT_MODEL, description="local dir, hub id or zoo name of the base model"
    )
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    applied_module: Literal["attention"] = Field(
        "attention",
        description="where the edit goes; only per-head attention outputs are supported",
    )
    applied_layers: list[int] | None = Field(
        None, description="decoder layers to edit (default: all)"
    )
    device: str = Field(
        "auto", description="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ..."
    )
    dtype: str | None = Field(
        None,
        description="base weights dtype; default bfloat16 when training_config.bf16 else float32",
    )
    attn_implementation: str | None = Field(
        None, description="'eager', 'sdpa', ... (default: HF's choice)"
    )
    cache_dir: str | None = Field(None, description="HF cache directory")
    trust_remote_code: bool = Field(False, description="passed to from_pretrained")


class TrainingSection(OlmokitConfig):
    """Hugging Face ``Trainer`` settings (``training_config``).

    Every field is a ``transformers.TrainingArguments`` field of the same name and meaning, except
    those in :attr:`OLMOKIT_ONLY`, which olmokit interprets (:meth:`derived_training_arguments`).
    """

    #: keys that are not passed to ``TrainingArguments`` under their own name
    OLMOKIT_ONLY: ClassVar[frozenset[str]] = frozenset(
        {
            "early_stopping_patience",
            "early_stopping_threshold",
            "gradient_checkpointing",
            "save_steps",
        }
    )

    output_dir: str = Field(
        "runs/jola", description="where the adapter, report and resolved config go"
    )
    learning_rate: float = Field(5e-3, gt=0, description="JoLA needs ~50x LoRA's learning rate")
    per_device_train_batch_size: int = Field(8, ge=1)
    per_device_eval_batch_size: int = Field(16, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    num_train_epochs: float = Field(20, gt=0)
    max_steps: int = Field(-1, description="optimizer steps; overrides num_train_epochs when > 0")
    warmup_steps: int = Field(50, ge=0)
    lr_scheduler_type: str = Field("cosine")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    bf16: bool = Field(
        False, description="bfloat16 base weights + autocast; JoLA tensors stay fp32"
    )
    seed: int = Field(42)
    eval_strategy: Literal["epoch", "steps", "no"] = Field("epoch")
    eval_steps: int | None = Field(None, ge=1, description="with eval_strategy 'steps'")
    logging_steps: int = Field(10, ge=1)
    early_stopping_patience: int | None = Field(
        2,
        ge=1,
        description="evaluations without eval-loss improvement before stopping (null: never)",
    )
    early_stopping_threshold: float = Field(0.0, ge=0)
    gradient_checkpointing: bool = Field(
        False, description="non-reentrant, so the edit still gets gradients"
    )
    save_steps: int | None = Field(
        50,
        ge=1,
        description="write a resumable checkpoint (adapter, optimizer, scheduler, RNG, data position) "
        "every this many optimizer steps into <output_dir>/checkpoints; null: none",
    )
    save_total_limit: int | None = Field(
        2, ge=1, description="checkpoints kept (oldest deleted first)"
    )
    dataloader_num_workers: int = Field(0, ge=0)
    disable_tqdm: bool = Field(False)
    report_to: list[str] = Field(default_factory=list, description="HF integrations (wandb, ...)")
    extra_args: dict[str, Any] = Field(
        default_factory=dict,
        description="any other transformers.TrainingArguments, passed verbatim",
    )

    @model_validator(mode="after")
    def _check_eval(self) -> TrainingSection:
        if self.eval_strategy == "steps" and self.eval_steps is None:
            raise ValueError("eval_strategy 'steps' needs eval_steps")
        return self

    def derived_training_arguments(self) -> dict[str, Any]:
        """The ``TrainingArguments`` that the olmokit-only keys stand for."""
        out: dict[str, Any] = (
            {"save_strategy": "steps", "save_steps": self.save_steps}
            if self.save_steps is not None
            else {"save_strategy": "no"}
        )
        if self.gradient_checkpointing:
            # non-reentrant: with a frozen base, reentrant checkpointing would cut the edit's gradients
            out.update(
                activation_checkpointing=True,
                activation_checkpointing_kwargs={"use_reentrant": False},
            )
        return out


class JoLASettings(OlmokitConfig):
    """Gate and penalty settings (``jola_config``); also stored inside every saved adapter."""

    gate_scheduler: Literal["expon", "linear", "cyclic", "perform", "constant"] | None = Field(
        "constant",
        description="schedule s_t of the penalty weight (null = constant 1); the reference's 'expon' "
        "decays the penalty to nothing (0.1*exp(-0.01 t)), so gates are never pushed shut",
    )
    gate_lambda: float = Field(
        0.15,
        ge=0,
        description="penalty strength (form 'strength'): loss = CE + gate_lambda*s_t*E[#open gates]. "
        "Default chosen on validation (300 questions, 3 seeds per point, gates starting open): the "
        "smallest lambda leaving <= 25% of heads open on both classification tasks (stdlib_module "
        "7e-2 25%, 1e-1 25%, 0.15 21%; stdlib_kind 7e-2 29%, 1e-1 28%, 0.15 25%); among settings "
        "meeting that target it has the lowest validation loss (stdlib_module 3.447 nats against "
        "3.633 for the previous default, xavier init at 7e-2; stdlib_kind 2.187 against 2.512); "
        "see docs/jola.md",
    )
    penalty: Literal["strength", "mixing"] = Field(
        "strength",
        description="'strength' (gate_lambda scales the expected-L0) or 'mixing' (the reference code: "
        "s_t mixes additive vs multiplicative penalties, gate_lambda unused)",
    )
    gate_learning_rate: float | None = Field(
        0.1,
        gt=0,
        description="learning rate of the gate log-alphas (own optimizer group, same schedule); "
        "null: training_config.learning_rate. Closing a gate needs log-alpha to move from its init "
        "to ~-2.4 (from 3: 5.4; the sum of the 150-step cosine schedule's rates at 0.1 is ~7.5)",
    )
    temperature: float = Field(0.33, gt=0, description="HardConcrete temperature beta")
    stretch_limits: tuple[float, float] = Field(
        (-0.1, 1.1), description="HardConcrete stretch (l, r)"
    )
    eps: float = Field(1e-6, gt=0, lt=0.5, description="uniform noise is drawn from (eps, 1-eps)")
    log_alpha_init: float | Literal["xavier"] = Field(
        3.0,
        description="a constant log-alpha, or 'xavier' (the reference: U(+-sqrt(6/(H+1))), gates "
        "about half open). Default 3: every gate starts open (expected gate 1), so the edit trains "
        "at full strength from step 0 and the penalty closes the heads it does not need. Chosen on "
        "validation loss (stdlib_module, 300 validation questions, 3 seeds): 3.36 nats with gate lr "
        "0.1 against 3.63 for xavier with 0.05, both leaving 8 or fewer of 32 heads open; see "
        "docs/jola.md",
    )
    edit_init_std: float = Field(
        1e-3, ge=0, description="A and v start as N(0, std^2); 0 = exact identity"
    )
    init_seed: int | None = Field(0, description="seed of the initialisation (null: global RNG)")
    eval_gate_mode: Literal["expected", "hard", "topk"] = Field(
        "expected", description="deterministic gate at evaluation and for merging"
    )
    hard_threshold: float = Field(
        0.5, ge=0, le=1, description="'hard': gate = 1 if expected gate > this"
    )
    topk: int | None = Field(
        None, ge=1, description="'topk': keep the k most open heads per gate type"
    )

    @field_validator("stretch_limits")
    @classmethod
    def _check_limits(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not (lo < 0 < 1 < hi):
            raise ValueError("stretch_limits must satisfy l < 0 and r > 1")
        return v

    @model_validator(mode="after")
    def _check_topk(self) -> JoLASettings:
        if self.eval_gate_mode == "topk" and self.topk is None:
            raise ValueError("eval_gate_mode 'topk' needs topk")
        return self


class DataSection(OlmokitConfig):
    """Training / evaluation data (``data_config``, an olmokit addition to the seed's shape)."""

    task: str | None = Field(
        "stdlib_module", description="built-in task used when train_file is not given"
    )
    train_file: str | None = Field(
        None, description="JSON/JSONL of chat or prompt/completion records"
    )
    eval_file: str | None = Field(
        None, description="held-out file (default: the task's held-out split)"
    )
    train_size: int | None = Field(
        200, ge=1, description="subsample training data (reference: 200)"
    )
    eval_size: int | None = Field(
        200, ge=1, description="subsample evaluation data (reference: 200)"
    )
    max_seq_length: int = Field(400, ge=8)
    loss_on: Literal["answer", "turn"] = Field(
        "answer",
        description="'answer': loss on the answer text only; 'turn': also the chat template's "
        "end-of-turn tokens (and EOS), which a model that never saw the template spends most of the "
        "loss on",
    )
    valid_size: int | None = Field(
        None,
        ge=1,
        description="validation examples carved from the training data for early stopping "
        "(default: eval_size); never the held-out test set",
    )
    seed: int = Field(0, description="subsampling seed")


class JoLAConfig(OlmokitConfig):
    """A whole JoLA run. Loads the seed's ``config_olmo2.yaml`` unchanged.

    Seed-style access works too: ``config["model_config"]`` is a plain dict usable as
    ``JoLAModel.jola_from_pretrained(**config["model_config"])``.
    """

    model: ModelSection = Field(default_factory=ModelSection, alias="model_config")
    training: TrainingSection = Field(default_factory=TrainingSection, alias="training_config")
    jola: JoLASettings = Field(default_factory=JoLASettings, alias="jola_config")
    data: DataSection = Field(default_factory=DataSection, alias="data_config")

    @classmethod
    def get_jola_config(
        cls, default: bool = False, config_path: str | os.PathLike[str] | None = None
    ) -> JoLAConfig:
        """Seed-compatible constructor. Unlike the reference, ``config_path`` is never ignored."""
        if config_path is not None:
            return cls.from_yaml(config_path)
        if not default:
            raise ConfigError("get_jola_config: pass config_path=... or default=True")
        return cls()

    def __getitem__(self, section: str) -> dict[str, Any]:
        data = self.as_dict()
        if section not in data:
            raise KeyError(f"{section!r}; sections: {', '.join(data)}")
        return data[section]

    def base_dtype(self) -> str:
        return self.model.dtype or ("bfloat16" if self.training.bf16 else "float32")
