"""Tokenization with TransformerLens's conventions (BOS, padding, single tokens, string round trips).

Mixed into :class:`~olmokit.lens.HookedOlmo`. Every position index in TL code assumes TL's defaults, so
they are followed exactly:

* ``prepend_bos`` (default ``cfg.default_prepend_bos``, ``True`` for OLMo as in TL's OLMo support,
  whose OLMo adapters keep TL's global default) puts a BOS token at position 0 of every *string*
  input. OLMo tokenizers have no BOS token, so TL's rule applies: EOS (``<|endoftext|>``) stands in
  for it. Token tensors are never changed.
* OLMo's HF tokenizers may *append* EOS (``add_special_tokens``); TL strips it. Here text is tokenized
  without special tokens, so nothing is appended in the first place.
* Lists of strings of different lengths are padded (``padding_side``: default the tokenizer's, right)
  with the tokenizer's pad token; :meth:`forward` and friends build the attention mask from the same
  tokenization, so padded positions are masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

__all__ = ["TokenMixin", "TokenInput"]

TokenInput = str | list[str] | torch.Tensor | np.ndarray | list[int]


class TokenMixin:
    """Tokenizer helpers of ``HookedOlmo`` (needs ``self.tokenizer``, ``self.cfg``, ``self._device()``)."""

    tokenizer: Any

    # ------------------------------------------------------------------ core
    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ConfigError(
                "this HookedOlmo has no tokenizer: pass token ids, or build HookedOlmo(model, tokenizer)"
            )
        return self.tokenizer

    @property
    def bos_token_id(self) -> int:
        """The id prepended as BOS: the tokenizer's BOS, or its EOS when it has none (TL's rule)."""
        tok = self._require_tokenizer()
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if bos is None:
            raise ConfigError(
                "the tokenizer has neither a BOS nor an EOS token; pass prepend_bos=False"
            )
        return int(bos)

    @property
    def pad_token_id(self) -> int:
        tok = self._require_tokenizer()
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return int(pad)

    def _resolve_bos(self, prepend_bos: bool | None) -> bool:
        return self.cfg.default_prepend_bos if prepend_bos is None else bool(prepend_bos)

    def _encode(self, text: str, prepend_bos: bool) -> list[int]:
        ids = list(self._require_tokenizer()(text, add_special_tokens=False)["input_ids"])
        return ([self.bos_token_id] if prepend_bos else []) + ids

    def _tokenize(
        self,
        input: str | Sequence[str],
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        truncate: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(tokens [batch, pos], attention_mask or None when nothing is padded)``."""
        bos = self._resolve_bos(prepend_bos)
        texts = [input] if isinstance(input, str) else list(input)
        if not texts or any(t == "" for t in texts):
            # zero tokens would fail deep inside HF's forward (and a lone BOS is no prompt);
            # whitespace is a valid prompt
            raise ConfigError("empty prompt: give the text the model should read")
        ids = [self._encode(t, bos) for t in texts]
        if truncate:
            ids = [x[: self.cfg.n_ctx] for x in ids]
        side = padding_side or getattr(self.tokenizer, "padding_side", "right") or "right"
        if side not in ("left", "right"):
            raise ConfigError(f"padding_side must be 'left' or 'right', got {side!r}")
        width = max(len(x) for x in ids)
        tokens = torch.full((len(ids), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):
            sl = slice(0, len(x)) if side == "right" else slice(width - len(x), width)
            tokens[row, sl] = torch.tensor(x, dtype=torch.long)
            mask[row, sl] = 1
        device = self._device()
        padded = bool((mask == 0).any())
        return tokens.to(device), (mask.to(device) if padded else None)

    # ------------------------------------------------------------------ TL API
    def to_tokens(
        self,
        input: str | list[str],
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> torch.Tensor:
        """Tokens ``[batch, pos]`` of a string or a list of strings (padded), BOS per ``prepend_bos``."""
        tokens, _ = self._tokenize(input, prepend_bos, padding_side, truncate)
        return tokens if move_to_device else tokens.cpu()

    def to_str_tokens(
        self,
        input: TokenInput,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
    ) -> list[str] | list[list[str]]:
        """Each token as its string: a list for one sequence, a list of lists for a batch of strings."""
        tok = self._require_tokenizer()
        if isinstance(input, list) and input and isinstance(input[0], str):
            return [self.to_str_tokens(s, prepend_bos, padding_side) for s in input]
        if isinstance(input, str):
            ids = self.to_tokens(input, prepend_bos, padding_side)[0]
        else:
            ids = torch.as_tensor(np.asarray(input) if isinstance(input, np.ndarray) else input)
            if ids.dim() == 2:
                if ids.shape[0] != 1:
                    raise ValueError(
                        f"to_str_tokens takes one sequence; got a batch of {ids.shape[0]}"
                    )
                ids = ids[0]
            ids = ids.reshape(-1)
        return [tok.decode([int(t)]) for t in ids]

    def to_string(self, tokens: int | torch.Tensor | np.ndarray | list[int]) -> str | list[str]:
        """Decode: one id or a 1-D sequence gives a string, a 2-D batch a list of strings."""
        tok = self._require_tokenizer()
        t = torch.as_tensor(np.asarray(tokens) if isinstance(tokens, np.ndarray) else tokens)
        if t.dim() == 0:
            return tok.decode([int(t)])
        if t.dim() == 1:
            return tok.decode(t.tolist())
        if t.dim() == 2:
            return [tok.decode(row.tolist()) for row in t]
        raise ValueError(f"to_string takes 0-, 1- or 2-D tokens, got {t.dim()}-D")

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token (no BOS); an error names its tokens otherwise."""
        ids = self._encode(string, prepend_bos=False)
        if len(ids) != 1:
            pieces = [self.tokenizer.decode([i]) for i in ids]
            raise ValueError(f"{string!r} is not a single token: it tokenizes to {pieces}")
        return ids[0]

    def to_single_str_token(self, int_token: int) -> str:
        return self._require_tokenizer().decode([int(int_token)])

    def get_token_position(
        self,
        single_token: str | int,
        input: str | torch.Tensor,
        mode: str = "first",
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
    ) -> int:
        """Index of the first (``mode="first"``) or last occurrence of a token in one sequence."""
        if isinstance(input, str):
            tokens = self.to_tokens(input, prepend_bos, padding_side)
        else:
            tokens = torch.as_tensor(input)
        if tokens.dim() == 2:
            if tokens.shape[0] != 1:
                raise ValueError(
                    f"get_token_position takes one sequence; got a batch of {tokens.shape[0]}"
                )
            tokens = tokens[0]
        tid = (
            self.to_single_token(single_token)
            if isinstance(single_token, str)
            else int(single_token)
        )
        hits = (tokens == tid).nonzero().flatten()
        if hits.numel() == 0:
            raise ValueError(f"token {single_token!r} ({tid}) does not occur in the input")
        if mode == "first":
            return int(hits[0])
        if mode == "last":
            return int(hits[-1])
        raise ValueError(f"mode must be 'first' or 'last', got {mode!r}")

    def tokens_to_residual_directions(
        self, tokens: str | int | torch.Tensor | list[int]
    ) -> torch.Tensor:
        """Unembedding directions ``W_U[:, t]``: ``[d_model]`` for one token, ``[..., d_model]`` else."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        t = torch.as_tensor(tokens, device=self.W_U.device)
        return self.W_U.T[t]
