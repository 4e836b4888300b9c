"""The memory demonstration recipe: a tiny windowed base that can copy what it sees, then a memory
that lets it copy what it can no longer see.

The shipped zoo model has no passkey skill, so (as the issue allows) the recipe first trains a tiny
base on the tasks themselves with a short attention window, freezes it, and only then trains the
memory:

1. **Base** (:func:`make_demo_base`, ``olmokit memory make-demo-base OUT``): an OLMo-3 model whose
   every layer is ``sliding_attention`` with window ``W`` (HF's sliding mask: a token sees itself and
   the ``W - 1`` before it, checked on CPU in the tests), over the synthetic
   :class:`~olmokit.data.longctx.TaskVocab`, trained with HF ``Trainer`` on *in-window* passkey and
   multi-query associative recall (every answer at most ``W - 1`` tokens after its evidence; loss on
   the answers only). It learns to copy a passkey and to look a key up when the evidence is visible,
   and is at chance when it is not. Saved under ``OUT/base`` with ``OUT/demo_base.json`` (settings,
   in-window and out-of-window accuracy); a second call with the same settings reuses it, other
   settings are an error — same seed, same torch → the same weights.
2. **Memory**: the base frozen, only the memory trained on examples whose evidence lies as far away as
   the evaluation's (a probe found the learned forgetting follows the training distances), with the
   write keyed on a middle layer's hidden states (writes keyed on token embeddings stayed at chance).
   ``benchmarks/memory_passkey.py`` runs this stage and the four conditions.

Sizes are chosen so step 1 takes about a minute on two CPU cores.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.longctx import (
    LongContextExample,
    TaskDataset,
    TaskVocab,
    mqar_example,
    mqar_length,
    passkey_example,
    passkey_length,
)
from ..errors import ConfigError
from ..eval.longctx import span_accuracy
from ..files import atomic_write_json
from ..loading import load_model, save_model
from ..zoo.build.circuits import circuit_friendly_init
from ..zoo.presets import make_config
from .config import MemorySettings, TrainingSection
from .model import MemoryModel, attach_memory
from .train import train_memory

__all__ = [
    "DEMO_BASE_DIR",
    "DemoBaseSettings",
    "DemoBase",
    "demo_base_config",
    "in_window_example",
    "base_training_set",
    "make_demo_base",
    "load_demo_base",
    "DemoMemorySettings",
    "demo_memory_settings",
    "attach_demo_memory",
    "padded_length",
    "passkey_set",
    "mqar_set",
    "train_demo_memory",
    "register_demo",
]

#: Where the demo configs and the benchmark expect the base (relative to the repository root).
DEMO_BASE_DIR = "runs/memory-demo-base"


@dataclass(frozen=True)
class DemoBaseSettings:
    """Everything the base depends on (a rebuild with other values is refused)."""

    window: int = 32
    hidden_size: int = 64
    num_layers: int = 2
    heads: int = 4
    n_filler: int = 64
    n_keys: int = 64
    n_values: int = 32
    max_pairs: int = 4  #: in-window MQAR uses 1..max_pairs pairs
    steps: int = 600
    batch_size: int = 32
    learning_rate: float = 3e-3
    seed: int = 0
    max_positions: int = 8192  #: RoPE positions the base accepts (long evaluation inputs)
    #: re-drawn input embedding std (None: the config's 0.02). Why: OLMo-3 normalises every
    #: sublayer's output to unit scale, so with 0.02 embeddings a token's own identity is a few
    #: percent of the stream after one layer; a memory keyed on the middle layers' hidden states
    #: then cannot tell one MQAR key from another (measured: the cosine of a query to its own key
    #: was 0.21 against 0.15 to the other keys; benchmarks/memory_mqar_keys.py), and recalls a
    #: stored value, but the wrong one.
    #: See :func:`olmokit.zoo.build.circuits.circuit_friendly_init`.
    embedding_init_std: float | None = None
    post_norm_init: float | None = None  #: initial post-sublayer norm weight (None: 1)

    @property
    def vocab(self) -> TaskVocab:
        return TaskVocab(self.n_filler, self.n_keys, self.n_values)

    @property
    def length(self) -> int:
        """Length of a base training example: two windows (the first one partly filler)."""
        return 2 * self.window

    def check(self) -> None:
        if self.window < 8:
            raise ConfigError(f"demo base window must be >= 8, got {self.window}")
        if self.max_pairs < 1 or 5 * self.max_pairs + 2 >= self.window:
            raise ConfigError(
                f"demo base max_pairs={self.max_pairs} does not fit in window {self.window} "
                f"(needs 5 * max_pairs + 2 < window)"
            )
        if self.steps < 1:
            raise ConfigError(f"demo base steps must be >= 1, got {self.steps}")


@dataclass(frozen=True)
class DemoBase:
    """A built base: its directory and what was measured on it."""

    path: Path
    settings: DemoBaseSettings
    info: dict[str, Any]

    @property
    def vocab(self) -> TaskVocab:
        return self.settings.vocab

    @property
    def window(self) -> int:
        return self.settings.window


def demo_base_config(settings: DemoBaseSettings):
    """An OLMo-3 config with every layer ``sliding_attention`` (window ``settings.window``)."""
    return make_config(
        "olmo3",
        "tiny",
        vocab_size=settings.vocab.size,
        hidden_size=settings.hidden_size,
        intermediate_size=4 * settings.hidden_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.heads,
        num_key_value_heads=settings.heads,
        sliding_window=settings.window,
        layer_types=["sliding_attention"] * settings.num_layers,
        max_position_embeddings=settings.max_positions,
        pad_token_id=TaskVocab.PAD,
        eos_token_id=TaskVocab.PAD,
    )


def in_window_example(gen: torch.Generator, settings: DemoBaseSettings) -> LongContextExample:
    """Half passkey, half MQAR (1..max_pairs pairs), every answer within ``window - 1`` tokens of
    its evidence, padded with filler to :attr:`DemoBaseSettings.length`."""
    w, vocab, length = settings.window, settings.vocab, settings.length
    if bool(torch.randint(0, 2, (), generator=gen)):
        return passkey_example(gen, vocab, length, (2, w - 1))
    n = int(torch.randint(1, settings.max_pairs + 1, (), generator=gen))
    span = 2 * n + 2
    # farthest answer - evidence = span - 1 + d + 3n - 1 <= w - 1
    d_max = w + 1 - span - 3 * n
    assert mqar_length(n, (1, d_max), span) <= length
    return mqar_example(gen, vocab, n, length, (1, d_max), write_span=span)


def base_training_set(settings: DemoBaseSettings, n: int, salt: str = "train") -> TaskDataset:
    return TaskDataset(lambda g: in_window_example(g, settings), n, settings.seed, salt)


def _accuracy(model: torch.nn.Module, items: list[dict[str, torch.Tensor]]) -> float:
    return span_accuracy(lambda ids: model(input_ids=ids).logits, items, 32, model).accuracy


def _far_passkeys(settings: DemoBaseSettings, n: int) -> list[dict[str, torch.Tensor]]:
    """Passkeys 4-8 windows away: the base cannot see them (it should be at chance)."""
    w = settings.window
    ds = TaskDataset(
        lambda g: passkey_example(g, settings.vocab, 9 * w, (4 * w, 8 * w)), n, settings.seed, "far"
    )
    return [ds[i] for i in range(n)]


def make_demo_base(
    out_dir: str | Path,
    settings: DemoBaseSettings | None = None,
    log: Callable[..., Any] = print,
) -> DemoBase:
    """Train (or reuse) the windowed demo base in ``out_dir`` (see the module docstring)."""
    from ..zoo.build.pretrain import pretrain

    settings = settings or DemoBaseSettings()
    settings.check()
    out = Path(out_dir).resolve()
    info_path, base_dir = out / "demo_base.json", out / "base"
    wanted = asdict(settings)
    if info_path.is_file():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        changed = [
            f"{k}: built with {info['settings'].get(k)}, now {v}"
            for k, v in wanted.items()
            if info["settings"].get(k) != v
        ]
        if changed:
            raise ConfigError(
                f"{out} holds a demo base built with other settings ({'; '.join(changed)}); "
                "pass another directory or delete it"
            )
        if (base_dir / "config.json").is_file():
            log(f"make_demo_base: reusing {base_dir}")
            return DemoBase(base_dir, settings, info)
    elif out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not a demo base; pass an empty or new directory")

    config = demo_base_config(settings)
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    circuit_friendly_init(
        model, settings.embedding_init_std, settings.post_norm_init, settings.seed
    )
    train = base_training_set(settings, settings.steps * settings.batch_size)
    log(
        f"make_demo_base: training a {settings.num_layers}-layer windowed base (window "
        f"{settings.window}) for {settings.steps} steps"
    )
    result = pretrain(
        model,
        train,
        out / ".work",
        steps=settings.steps,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        seed=settings.seed,
        warmup_steps=max(1, settings.steps // 20),
        save_steps=max(1, settings.steps // 3),
    )
    model.config.use_cache = True
    model.eval()
    heldout = base_training_set(settings, 256, salt="heldout")
    info = {
        "settings": wanted,
        "vocab_size": settings.vocab.size,
        "torch": torch.__version__,
        "train_loss": result["train_loss"],
        "in_window_accuracy": _accuracy(model, [heldout[i] for i in range(len(heldout))]),
        "far_passkey_accuracy": _accuracy(model, _far_passkeys(settings, 256)),
        "chance": settings.vocab.chance(),
    }
    save_model(model, base_dir)
    atomic_write_json(info_path, info)
    shutil.rmtree(out / ".work", ignore_errors=True)
    log(
        f"make_demo_base: in-window accuracy {info['in_window_accuracy']:.3f}, passkey 4-8 windows "
        f"away {info['far_passkey_accuracy']:.3f} (chance {info['chance']:.3f})"
    )
    return DemoBase(base_dir, settings, info)


def load_demo_base(base: DemoBase, dtype: str = "float32") -> torch.nn.Module:
    """The built base as a frozen-ready HF model (eval mode)."""
    return load_model(base.path, dtype=dtype).eval()


# --- stage 2: the memory --------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoMemorySettings:
    """The memory of the demo and how it is trained (one task at a time).

    ``alpha_bias`` is the initial bias of the forget gate α (sigmoid(-8) ≈ 3e-4 per token, so an
    untrained memory keeps ~70% of a write over 1000 tokens; the engine's default -5 keeps ~0.1%):
    training then only has to learn *what* to write, and what it learns at a few windows carries to
    32 windows (the accuracy-vs-distance curve of the benchmark checks it).
    """

    layer: int = 1  #: the decoder layer whose input is written and read (a contextual one)
    mode: str = "mag"
    heads: int = 4
    hidden: int = 64
    conv_kernel: int = 2  #: a key sees the token before it (MQAR: the key of a key→value pair)
    alpha_bias: float = -8.0
    #: tokens before a segment its attention also sees (``memory.carry_context``): the base's
    #: whole sliding window, as in Titans' MAG. With isolated segments (0) a needle on a segment's
    #: last tokens was lost (the write gate fires just after the value, in the next segment):
    #: passkey 0.934/0.938 at 32 windows against 1.000 with the window carried.
    carry_context: int | str = "auto"
    #: ``memory.qk_init`` / ``memory.key_conv_init``: the MQAR stage starts the memory as a
    #: key→value store (query = key projection, key of t = token t-1); with the plain init a
    #: memory learned to return *a* stored value, not the one its key addresses (docs/memory.md)
    qk_init: str = "independent"
    key_conv_init: str = "identity"
    steps: int = 800
    batch_size: int = 16
    learning_rate: float = 3e-3
    seed: int = 0


def demo_memory_settings(window: int, mem: DemoMemorySettings) -> MemorySettings:
    """The :class:`MemorySettings` of the demo memory: segments of one window, chunks of half."""
    chunk = max(1, window // 2)
    return MemorySettings(
        memory_layers=[mem.layer],
        mode=mem.mode,
        segment_len=window,
        heads=mem.heads,
        hidden=mem.hidden,
        conv_kernel=mem.conv_kernel,
        alpha_bias=mem.alpha_bias,
        carry_context=mem.carry_context,
        qk_init=mem.qk_init,
        key_conv_init=mem.key_conv_init,
        chunk_train=chunk,
        chunk_prefill=chunk,
        init_seed=mem.seed,
    )


def attach_demo_memory(model: torch.nn.Module, window: int, mem: DemoMemorySettings) -> MemoryModel:
    """Attach the demo memory (its forget gate's initial bias included) to a (frozen) base."""
    return attach_memory(model, demo_memory_settings(window, mem))


def padded_length(n: int, window: int) -> int:
    """``n`` rounded up to whole segments (a memory model runs whole windows)."""
    return -(-n // window) * window


def passkey_set(
    vocab: TaskVocab,
    window: int,
    distance: tuple[int, int],
    n: int,
    seed: int,
    salt: str,
    boundary: float = 0.0,
) -> TaskDataset:
    """Passkeys ``distance`` tokens from their query, at every offset inside a segment (a range of
    at least one window spreads the needle over all offsets).

    ``boundary``: the fraction of examples whose needle value sits on the last or the first token
    of a segment (the rest: uniform). Why: a memory trained on uniform offsets learned to write
    one token *after* the value, gated on the base's in-segment context ("my previous token was a
    needle value"); that context is gone at the first token of a segment, so needles on a
    segment's last token were lost (most of the misses of the first runs). Oversampling the
    boundaries makes that shortcut costly; the value token's own identity gates a write at any
    offset.
    """
    length = padded_length(passkey_length(distance), window)
    lo, hi = distance
    answer = length - 1  # one digit: the answer is the last token
    edge = [d for d in range(lo, hi + 1) if (answer - d) % window in (0, window - 1)]
    if boundary > 0 and not edge:
        raise ConfigError(f"no passkey distance in {distance} puts the needle on a segment edge")

    def make(g: torch.Generator) -> LongContextExample:
        if boundary > 0 and float(torch.rand((), generator=g)) < boundary:
            d = edge[int(torch.randint(0, len(edge), (), generator=g))]
            return passkey_example(g, vocab, length, d)
        return passkey_example(g, vocab, length, distance)

    return TaskDataset(make, n, seed, salt)


def mqar_set(
    vocab: TaskVocab,
    window: int,
    pairs: int | tuple[int, int],
    distance: tuple[int, int],
    n: int,
    seed: int,
    salt: str,
    max_pairs: int = 32,
) -> TaskDataset:
    """MQAR examples with ``pairs`` pairs (a ``(lo, hi)`` range draws the count per example)
    written over two windows and queried ``distance`` tokens later; one length for every count
    (that of ``max_pairs``), so a training batch may mix them."""
    lo, hi = (pairs, pairs) if isinstance(pairs, int) else pairs
    span = max(2 * window, 2 * max_pairs)
    length = padded_length(mqar_length(max_pairs, distance, span), window)

    def make(g: torch.Generator) -> LongContextExample:
        k = int(torch.randint(lo, hi + 1, (), generator=g))
        return mqar_example(g, vocab, k, length, distance, write_span=span)

    return TaskDataset(make, n, seed, salt)


def train_demo_memory(
    mm: MemoryModel,
    train: TaskDataset,
    mem: DemoMemorySettings,
    work_dir: str | Path,
    progress: bool = False,
) -> dict[str, Any]:
    """Train only the memory (the base stays frozen) with HF ``Trainer`` (:func:`train_memory`)."""
    args = TrainingSection(
        max_steps=mem.steps,
        learning_rate=mem.learning_rate,
        per_device_train_batch_size=mem.batch_size,
        warmup_steps=max(1, mem.steps // 20),
        save_steps=None,
        logging_steps=max(1, mem.steps // 10),
        seed=mem.seed,
        disable_tqdm=not progress,
    )
    return train_memory(mm, train, args=args, output_dir=str(work_dir), progress=progress)


# --- CLI -----------------------------------------------------------------------------------------


def register_demo(verbs: Any) -> None:
    """Add ``olmokit memory make-demo-base OUT`` to the memory tool's verbs (called by its CLI)."""
    p = verbs.add_parser(
        "make-demo-base",
        help="train the tiny windowed task base of the memory demo (about a minute on CPU)",
    )
    p.add_argument("out", nargs="?", default=DEMO_BASE_DIR, help="output directory")
    p.add_argument("--steps", type=int, default=DemoBaseSettings.steps, help="optimizer steps")
    p.add_argument("--window", type=int, default=DemoBaseSettings.window, help="attention window")
    p.add_argument("--seed", type=int, default=DemoBaseSettings.seed)
    p.set_defaults(func=_cli_make_demo_base)


def _cli_make_demo_base(args: Any) -> int:
    settings = DemoBaseSettings(steps=args.steps, window=args.window, seed=args.seed)
    base = make_demo_base(args.out, settings)
    print(json.dumps({"path": str(base.path), **base.info}, indent=2))
    return 0
