"""Teaching a zoo model a circuit to find, and measuring that it has one.

The interpretability demos users know (induction heads; TransformerLens's head detection) need a model
that *has* an induction circuit. Natural text alone grows none in a build of minutes (``olmo2-stdlib``
scores ≤ 0.03 on every head), so the recipe mixes in sequences made of a random token string repeated
to fill the block, scored on the repeats only: the only way to predict them is to find the earlier
copy and read the token after it — an induction head, fed by a previous-token head in the layer below.

:func:`induction_probe` measures the result the way ``olmokit lens induction`` does (same repeated
random tokens, same diagonal), but from plain HF ``output_attentions`` so the build needs no tool: the
zoo tests check the two agree, which also checks the lens's hooks against the model's own attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from ...errors import ConfigError
from ...eval.nll import token_nll
from ...family import get_adapter

__all__ = [
    "RepeatedSequences",
    "MixedBlocks",
    "InductionProbe",
    "induction_probe",
    "circuit_friendly_init",
]

#: Token ids below this are the zoo tokenizer's special tokens; random sequences never use them.
FIRST_ORDINARY_ID = 4


class RepeatedSequences(Dataset):
    """``size`` blocks of ``seq_len`` tokens: a random string of ``min_len..max_len`` ordinary tokens
    repeated to fill the block. Labels are ``-100`` on the first copy (it is unpredictable noise).

    Item ``i`` depends only on ``(seed, i)``, so the data is the same whatever order a sampler or a
    resumed run asks for it in.
    """

    def __init__(
        self, size: int, seq_len: int, vocab_size: int, min_len: int, max_len: int, seed: int
    ):
        self.size, self.seq_len, self.vocab_size = size, seq_len, vocab_size
        self.min_len, self.max_len, self.seed = min_len, max_len, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        period = int(torch.randint(self.min_len, self.max_len + 1, (1,), generator=gen))
        string = torch.randint(FIRST_ORDINARY_ID, self.vocab_size, (period,), generator=gen)
        block = string.repeat(-(-self.seq_len // period))[: self.seq_len]
        labels = block.clone()
        labels[:period] = -100
        return {"input_ids": block, "labels": labels}


class MixedBlocks(Dataset):
    """Text blocks followed by synthetic ones (the sampler shuffles them together)."""

    def __init__(self, text: Dataset, synthetic: Dataset):
        self.text, self.synthetic = text, synthetic

    def __len__(self) -> int:
        return len(self.text) + len(self.synthetic)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        n = len(self.text)
        return self.text[i] if i < n else self.synthetic[i - n]


@torch.no_grad()
def circuit_friendly_init(
    model: torch.nn.Module,
    embedding_std: float | None = None,
    post_norm_init: float | None = None,
    seed: int = 0,
) -> None:
    """Initialisation that lets a tiny post-norm OLMo grow an induction circuit in minutes.

    OLMo-2 normalises every sublayer's *output* to unit scale before adding it to the residual
    stream, while the embeddings start at std 0.02: after one layer a token's own identity is a few
    percent of the stream, and the second layer cannot match it against the previous token's
    (measured: no induction head after 2,000 steps). Larger embeddings (``embedding_std``) and small
    post-norm weights (``post_norm_init``, like LayerScale: every layer starts near the identity)
    keep the token visible; the phase change then comes after a few hundred steps.
    """
    if embedding_std is not None:
        weight = model.get_input_embeddings().weight
        gen = torch.Generator().manual_seed(seed)
        weight.copy_(torch.randn(weight.shape, generator=gen) * embedding_std)
    if post_norm_init is not None:
        adapter = get_adapter(model)
        if adapter.norm_placement != "post":
            raise ConfigError(
                f"post_norm_init needs a post-norm family (OLMo-2/3); {adapter.spec.display_name} "
                "normalises sublayer inputs"
            )
        for i in range(adapter.num_layers):
            for norm in adapter.norms(i).values():
                norm.weight.fill_(post_norm_init)


@dataclass
class InductionProbe:
    induction: torch.Tensor  #: [layers, heads] mean attention to the token after the earlier copy
    previous_token: torch.Tensor  #: [layers, heads] mean attention to the previous token
    copy_gain: float  #: mean NLL of the first copy minus the second (nats; > 0: in-context copying)
    seq_len: int
    batch: int
    seed: int

    def top(self, n: int = 5) -> list[dict[str, Any]]:
        flat = self.induction.flatten()
        heads = self.induction.shape[1]
        return [
            {
                "layer": int(i) // heads,
                "head": int(i) % heads,
                "induction": float(flat[i]),
                "previous_token": float(self.previous_token.flatten()[i]),
            }
            for i in flat.argsort(descending=True)[:n]
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq_len": self.seq_len,
            "batch": self.batch,
            "seed": self.seed,
            "copy_gain": self.copy_gain,
            "top": self.top(5),
            "induction": [[round(float(x), 4) for x in row] for row in self.induction],
            "previous_token": [[round(float(x), 4) for x in row] for row in self.previous_token],
        }


@torch.no_grad()
def induction_probe(
    model: torch.nn.Module, seq_len: int = 32, batch: int = 8, seed: int = 0
) -> InductionProbe:
    """Induction and previous-token scores of every head on ``batch`` random strings repeated once
    (no BOS), with the lens's token draw: ``randint(4, vocab)`` from ``Generator().manual_seed(seed)``.

    The model is switched to eager attention for the call (only eager returns the probabilities) and
    restored, as is its training mode.
    """
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    half = torch.randint(FIRST_ORDINARY_ID, vocab, (batch, seq_len), generator=gen)
    tokens = torch.cat([half, half], dim=1).to(next(model.parameters()).device)
    previous_impl, was_training = model.config._attn_implementation, model.training
    model.set_attn_implementation("eager")
    model.eval()
    try:
        out = model(tokens, output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation(previous_impl)
        model.train(was_training)
    attentions = out.attentions
    nll = token_nll(out.logits, tokens)  # [batch, 2 * seq_len - 1]
    induction = torch.stack(
        [
            a.diagonal(offset=1 - seq_len, dim1=-2, dim2=-1)[..., 1:].float().mean(dim=(0, 2))
            for a in attentions
        ]
    )
    previous = torch.stack(
        [a.diagonal(offset=-1, dim1=-2, dim2=-1).float().mean(dim=(0, 2)) for a in attentions]
    )
    copy_gain = float(nll[:, : seq_len - 1].mean() - nll[:, seq_len:].mean())
    return InductionProbe(induction.cpu(), previous.cpu(), copy_gain, seq_len, batch, seed)
