"""Memory configuration: which base, which layers, which mode, the neural memory's sizes, training.

A memory run is one YAML file with four sections::

    model:     the frozen base (zoo model by default), device, dtype
    memory:    memory_layers, mode (mac | mag | mal), segment length, persistent tokens, the NeuralMemory
               sizes (heads, hidden, depth, attentional bias, ...), chunk sizes, truncated BPTT
    training:  Hugging Face ``Trainer`` settings (through ``olmokit.inject.training_arguments``)
    data:      long token sequences (the zoo corpus, or a JSONL file of token ids + labels)

Every section rejects unknown keys with an error listing the valid ones. What can only be checked
against a loaded model (layer indices, the segment length against the attention window, chunk sizes
against the segment) is checked by :meth:`MemorySettings.resolve` when the memory is attached, with
messages that say which key to change.

The seed's ``MIRAS_CONFIG_7B`` keys map onto ``memory`` as documented in ``docs/memory.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from ..config import OlmokitConfig
from ..errors import ConfigError
from ..family import get_adapter
from ..zoo.registry import DEFAULT_MODEL

__all__ = [
    "MemoryConfig",
    "MemorySettings",
    "ModelSection",
    "TrainingSection",
    "DataSection",
    "ResolvedMemory",
]

Mode = Literal["mac", "mag", "mal"]


class ModelSection(OlmokitConfig):
    """The frozen base model (``model`` in the YAML)."""

    name: str = Field(DEFAULT_MODEL, description="local dir, hub id or zoo name of the base model")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    device: str = Field("auto", description="'auto' (cuda when available), 'cpu', 'cuda', ...")
    dtype: str | None = Field(
        None,
        description="base weights dtype; default bfloat16 when training.bf16 else float32 "
        "(memory parameters and state are always float32)",
    )
    attn_implementation: str | None = Field(
        None, description="'eager' or 'sdpa' (MAC and persistent tokens need one of these)"
    )


class MemorySettings(OlmokitConfig):
    """Where the memory goes and how it is built (``memory`` in the YAML; saved with every adapter).

    The NeuralMemory fields (``heads`` ... ``chunk_decode``) are passed to
    :class:`olmokit.memory.neural.NeuralMemoryConfig`; ``dim`` is the base's hidden size.
    """

    memory_layers: list[int] = Field(
        default_factory=lambda: [1],
        description="decoder layers that get a memory (negative = from end)",
    )
    mode: Mode = Field(
        "mag",
        description="mac: retrieve, attend over [persistent | retrieved | segment], then store; "
        "mag: gated sum of attention output and memory output; mal: memory before the layer",
    )
    segment_len: int | None = Field(
        None,
        ge=1,
        description="tokens per segment (attention never spans two unless carry_context > 0); "
        "default: the base's sliding "
        "window (OLMo-3), required otherwise",
    )
    persistent_tokens: int = Field(
        0, ge=0, description="learnable tokens prepended to every segment's attention"
    )
    carry_context: int | Literal["auto"] = Field(
        0,
        description="mag/mal: tokens before each segment that its attention also sees, through the "
        "base's KV cache carried across segments (Titans' sliding-window attention; keys/values "
        "detached at each boundary). 0: off, attention never spans two segments (adapters saved "
        "before this key); 'auto': the base's sliding window (segment_len without one); a "
        "sliding-window layer never sees more than window - 1 earlier tokens, whatever the value",
    )
    write_source: Literal["layer_input", "attention_output"] | None = Field(
        None,
        description="what the memory stores: the layer's (contextual) input hidden states, or "
        "(MAC only) the attention output as in the paper; default: attention_output for mac, "
        "layer_input otherwise",
    )
    heads: int = Field(4, ge=1, description="memory heads")
    head_dim: int | None = Field(
        None, ge=1, description="key/value width per head (default hidden_size // heads)"
    )
    hidden: int = Field(128, ge=1, description="hidden width of each head's memory MLP")
    depth: int = Field(2, ge=2, description="memory MLP depth (>= 2)")
    residual_norm: bool = Field(False, description="M(x) = x + LN(MLP(x)) (the MIRAS form)")
    bias: Literal["l2", "huber", "lp"] = Field(
        "l2", description="attentional bias (inner loss): l2 (Titans), huber (Yaad), lp (Moneta)"
    )
    huber_delta: float = Field(1.0, gt=0, description="Huber threshold (bias: huber)")
    lp_p: float = Field(3.0, gt=1, description="p of the lp bias (bias: lp)")
    conv_kernel: int = Field(0, ge=0, description="short causal depthwise conv on q/k/v (0 = off)")
    max_lr: float = Field(0.1, gt=0, description="inner learning rate theta = sigmoid(.) * max_lr")
    grad_clip: float = Field(1.0, gt=0, description="soft clip of the inner gradients")
    alpha_bias: float = Field(
        -5.0,
        ge=-30,
        le=30,
        allow_inf_nan=False,
        description="initial bias of the forget gate alpha = sigmoid(.) (-5: ~0.7% forgotten per "
        "token; -8: ~0.03%, a write survives ~1000 tokens untrained — for far recall)",
    )
    eta_bias: float = Field(
        2.0,
        ge=-30,
        le=30,
        allow_inf_nan=False,
        description="initial bias of the momentum gate eta = sigmoid(.) (2: ~0.88)",
    )
    theta_bias: float = Field(
        0.0,
        ge=-30,
        le=30,
        allow_inf_nan=False,
        description="initial bias of the inner learning rate theta = sigmoid(.) * max_lr "
        "(0: max_lr / 2)",
    )
    granularity: Literal["token", "chunk"] = Field(
        "token",
        description="memory updates per token (Titans' equations; per-token gates, momentum and "
        "decay inside a chunk, gradients at the chunk-start weights) or one per chunk "
        "(titans-pytorch's chunk_size=b, batch_size=b: summed gradients, mean-pooled gates; "
        "faster, and the forget gate acts once per chunk); see docs/memory.md",
    )
    qk_init: Literal["independent", "tied"] = Field(
        "independent",
        description="tied: the query projection starts as a copy of the key projection, so a "
        "query retrieves what the same content wrote from step 0 (associative recall learned "
        "key addressing only with it; see docs/memory.md)",
    )
    key_conv_init: Literal["identity", "previous_token"] = Field(
        "identity",
        description="previous_token (needs conv_kernel >= 2): the key of token t starts as token "
        "t-1's, so the memory stores (t-1 -> t), a key followed by its value",
    )
    chunk_train: int = Field(16, ge=1, description="engine chunk while training")
    chunk_prefill: int = Field(16, ge=1, description="engine chunk for no-grad forwards/prefill")
    chunk_decode: int = Field(1, ge=1, description="engine chunk while generating token by token")
    bptt_segments: int | None = Field(
        None,
        ge=1,
        description="truncated BPTT: detach the memory state every this many segments "
        "(null: backpropagate through the whole sequence)",
    )
    retrieval_norm: bool = Field(
        True,
        description="RMS-normalise the memory's read (mag/mal) before its gate: without it the "
        "outer optimiser inflates the memory MLP for a louder read until the inner updates turn "
        "unstable (gradient norms 1e3-1e5); false: the unnormalised read of adapters saved "
        "before this key",
    )
    init_seed: int | None = Field(0, description="seed of the memory initialisation")

    #: fields passed on to NeuralMemoryConfig (besides ``dim``)
    ENGINE_FIELDS: ClassVar[tuple[str, ...]] = (
        "heads",
        "head_dim",
        "hidden",
        "depth",
        "residual_norm",
        "bias",
        "huber_delta",
        "lp_p",
        "conv_kernel",
        "max_lr",
        "grad_clip",
        "alpha_bias",
        "eta_bias",
        "theta_bias",
        "granularity",
        "qk_init",
        "key_conv_init",
        "chunk_train",
        "chunk_prefill",
        "chunk_decode",
    )

    @model_validator(mode="after")
    def _check(self) -> MemorySettings:
        if not self.memory_layers:
            raise ValueError("memory_layers is empty; give at least one decoder layer index")
        if len(set(self.memory_layers)) != len(self.memory_layers):
            raise ValueError(f"memory_layers has duplicates: {self.memory_layers}")
        if isinstance(self.carry_context, int) and self.carry_context < 0:
            raise ValueError(
                f"carry_context must be >= 0 (0 = off) or 'auto', got {self.carry_context}"
            )
        if self.carry_context != 0 and self.mode == "mac":
            raise ValueError(
                "carry_context is for modes mag and mal: MAC attends per segment over [persistent "
                "| retrieved | segment] as in the Titans paper (its context beyond the segment "
                "comes from the memory); set carry_context: 0 or mode: mag/mal"
            )
        if self.carry_context != 0 and self.persistent_tokens:
            raise ValueError(
                "carry_context with persistent_tokens is not supported: the persistent tokens' "
                "extra attention does not see the carried keys/values; set one of them to 0"
            )
        if self.key_conv_init == "previous_token" and self.conv_kernel < 2:
            raise ValueError(
                "key_conv_init 'previous_token' needs conv_kernel >= 2 (the key convolution must "
                f"reach the token before); got conv_kernel {self.conv_kernel}"
            )
        if self.write_source == "attention_output" and self.mode != "mac":
            raise ValueError(
                "write_source 'attention_output' is only for mode mac (MAG/MAL memories read "
                "the layer input); use write_source: layer_input"
            )
        return self

    @property
    def source(self) -> str:
        return self.write_source or ("attention_output" if self.mode == "mac" else "layer_input")

    def engine_kwargs(self) -> dict[str, Any]:
        """The NeuralMemoryConfig keyword arguments (without ``dim``)."""
        return {k: getattr(self, k) for k in self.ENGINE_FIELDS}

    def resolve(self, model_or_config: Any) -> ResolvedMemory:
        """Check these settings against a base model (or its config) and fill in what depends on it.

        Raises :class:`ConfigError` naming the key to change: layer indices out of range, a missing
        or too long ``segment_len``, chunk sizes that do not divide the segment, memory writes keyed
        on token embeddings (layer 0's input; the issue's probe found them useless).
        """
        adapter = get_adapter(model_or_config)
        n = adapter.num_layers
        bad = [i for i in self.memory_layers if not -n <= i < n]
        if bad:
            raise ConfigError(
                f"memory.memory_layers {bad} out of range for a {n}-layer {adapter.spec.display_name} "
                f"model (valid: 0..{n - 1}, or -{n}..-1 from the end)"
            )
        layers = sorted({i % n for i in self.memory_layers})
        if len(layers) != len(self.memory_layers):
            raise ConfigError(
                f"memory.memory_layers {self.memory_layers} name the same layer twice"
            )
        window = adapter.sliding_window if adapter.spec.has_sliding_window else None
        max_pos = getattr(adapter.config, "max_position_embeddings", None)
        seg = self.segment_len
        if seg is None:
            if window is None:
                raise ConfigError(
                    f"memory.segment_len is required for {adapter.spec.display_name}: it has no "
                    f"sliding window to default to; set it to the attention span the memory should "
                    f"extend (<= max_position_embeddings = {max_pos})"
                )
            seg = int(window)
        if window is not None and seg > window:
            raise ConfigError(
                f"memory.segment_len {seg} exceeds the base's sliding window {window}; a segment "
                f"must fit in the window (set memory.segment_len <= {window})"
            )
        if max_pos is not None and seg > int(max_pos):
            raise ConfigError(
                f"memory.segment_len {seg} exceeds max_position_embeddings {max_pos} of the base"
            )
        for key in ("chunk_train", "chunk_prefill", "chunk_decode"):
            c = getattr(self, key)
            if c > seg or seg % c:
                raise ConfigError(
                    f"memory.{key} = {c} does not fit memory.segment_len = {seg}: a chunk must divide "
                    f"the segment (so every segment's writes are complete when the next one reads); "
                    f"valid: divisors of {seg}"
                )
        if self.source == "layer_input" and 0 in layers:
            raise ConfigError(
                "memory.memory_layers includes 0, whose input is the token embeddings: memory writes keyed "
                "on embeddings stayed at chance in the issue's probe (they need the frozen base's "
                "contextual hidden states); use a layer >= 1"
                + (", or write_source: attention_output" if self.mode == "mac" else "")
            )
        hidden = adapter.hidden_size
        head_dim = self.head_dim or hidden // self.heads
        if head_dim < 1:
            raise ConfigError(f"memory.heads {self.heads} exceeds the hidden size {hidden}")
        carry = self.carry_context
        if carry == "auto":
            carry = int(window) if window is not None else seg
        return ResolvedMemory(self, tuple(layers), seg, hidden, head_dim, int(carry))


@dataclass(frozen=True)
class ResolvedMemory:
    """:class:`MemorySettings` checked against one base: concrete layers, segment length, widths."""

    settings: MemorySettings
    layer_indices: tuple[int, ...]
    segment_len: int
    hidden_size: int
    head_dim: int
    #: tokens before a segment its attention also sees (``carry_context`` resolved; 0: none)
    carry_context: int = 0


class TrainingSection(OlmokitConfig):
    """Hugging Face ``Trainer`` settings (``training``).

    Every field is a ``transformers.TrainingArguments`` field of the same name and meaning, except
    those in :attr:`OLMOKIT_ONLY`, which olmokit interprets (:meth:`derived_training_arguments`).
    """

    OLMOKIT_ONLY: ClassVar[frozenset[str]] = frozenset({"save_steps", "bf16"})

    output_dir: str = Field("runs/memory", description="the run directory")
    learning_rate: float = Field(1e-3, gt=0, description="for the memory parameters only")
    per_device_train_batch_size: int = Field(4, ge=1)
    per_device_eval_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    num_train_epochs: float = Field(1, gt=0)
    max_steps: int = Field(-1, description="optimizer steps; overrides num_train_epochs when > 0")
    warmup_steps: int = Field(0, ge=0)
    lr_scheduler_type: str = Field("cosine")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    bf16: bool = Field(False, description="bfloat16 base weights; memory stays float32")
    seed: int = Field(42)
    eval_strategy: Literal["epoch", "steps", "no"] = Field("no")
    eval_steps: int | None = Field(None, ge=1, description="with eval_strategy 'steps'")
    logging_steps: int = Field(10, ge=1)
    save_steps: int | None = Field(
        50,
        ge=1,
        description="write a resumable checkpoint (memory adapter, optimizer, scheduler, RNG, data "
        "position) every this many optimizer steps into <output_dir>/checkpoints; null: none",
    )
    save_total_limit: int | None = Field(2, ge=1, description="checkpoints kept (oldest first)")
    dataloader_num_workers: int = Field(0, ge=0)
    disable_tqdm: bool = Field(False)
    report_to: list[str] = Field(default_factory=list, description="HF integrations (wandb, ...)")
    extra_args: dict[str, Any] = Field(
        default_factory=dict, description="any other transformers.TrainingArguments, verbatim"
    )

    @model_validator(mode="after")
    def _check_eval(self) -> TrainingSection:
        if self.eval_strategy == "steps" and self.eval_steps is None:
            raise ValueError("eval_strategy 'steps' needs eval_steps")
        return self

    def derived_training_arguments(self) -> dict[str, Any]:
        """The ``TrainingArguments`` that the olmokit-only keys stand for."""
        if self.save_steps is None:
            return {"save_strategy": "no"}
        return {"save_strategy": "steps", "save_steps": self.save_steps}


class DataSection(OlmokitConfig):
    """Long token sequences to train and evaluate on (``data``).

    ``source: corpus`` cuts the zoo corpus (training split for training, held-out split for
    evaluation) into ``seq_len``-token sequences; ``source: file`` reads JSONL rows
    ``{"input_ids": [...], "labels": [...]}`` (labels optional; -100 = not scored).
    """

    source: Literal["corpus", "file"] = Field("corpus")
    kind: Literal["prose", "code"] | None = Field(
        None, description="corpus: only prose or only code documents (null: both)"
    )
    train_file: str | None = Field(None, description="source file: training JSONL")
    eval_file: str | None = Field(None, description="source file: evaluation JSONL")
    seq_len: int = Field(256, ge=2, description="tokens per training sequence (several segments)")
    train_size: int | None = Field(64, ge=1, description="training sequences (null: all)")
    eval_size: int | None = Field(16, ge=1, description="evaluation sequences (null: all)")
    seed: int = Field(0, description="sampling seed")

    @model_validator(mode="after")
    def _check_files(self) -> DataSection:
        if self.source == "file" and not self.train_file:
            raise ValueError("data.source 'file' needs data.train_file")
        return self


class MemoryConfig(OlmokitConfig):
    """A whole memory run (``olmokit memory train CONFIG.yaml``)."""

    model: ModelSection = Field(default_factory=ModelSection)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    training: TrainingSection = Field(default_factory=TrainingSection)
    data: DataSection = Field(default_factory=DataSection)

    def base_dtype(self) -> str:
        return self.model.dtype or ("bfloat16" if self.training.bf16 else "float32")
