"""The TransformerLens utilities notebooks call, as ``olmokit.lens.utils`` (TL: ``transformer_lens.utils``).

``import olmokit.lens.utils as utils`` in place of ``import transformer_lens.utils as utils`` keeps a
notebook's ``utils.get_act_name(...)``, ``utils.to_numpy(...)``, ``utils.test_prompt(...)`` lines
working. Written for olmokit (same signatures and meanings as TL's, not TL's code).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from ..eval.nll import token_nll
from .names import get_act_name

__all__ = [
    "get_act_name",
    "get_device",
    "to_numpy",
    "lm_cross_entropy_loss",
    "lm_accuracy",
    "test_prompt",
    "tokenize_and_concatenate",
    "remove_batch_dim",
    "get_corner",
]


def get_device() -> torch.device:
    """The best available device: CUDA, then Apple MPS, then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def to_numpy(tensor: Any) -> np.ndarray:
    """A NumPy array of a tensor (detached, on CPU), an array, a list or a number."""
    if isinstance(tensor, np.ndarray):
        return tensor
    if isinstance(tensor, torch.Tensor):
        return tensor.detach().cpu().numpy()
    if isinstance(tensor, (list, tuple, int, float)):
        return np.array(tensor)
    raise ValueError(f"cannot convert {type(tensor).__name__} to numpy")


def lm_cross_entropy_loss(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    per_token: bool = False,
) -> torch.Tensor:
    """Next-token NLL of ``tokens`` under ``logits``: ``[batch, pos - 1]`` or its mean (TL)."""
    nll = token_nll(logits, tokens)
    if attention_mask is None:
        return nll if per_token else nll.mean()
    keep = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    nll = torch.where(keep, nll, torch.zeros_like(nll))
    return nll if per_token else nll.sum() / keep.sum()


def lm_accuracy(
    logits: torch.Tensor, tokens: torch.Tensor, per_token: bool = False
) -> torch.Tensor:
    """Fraction of positions whose argmax is the next token (per token: booleans ``[batch, pos-1]``)."""
    correct = logits[:, :-1].argmax(-1) == tokens[:, 1:]
    return correct if per_token else correct.float().mean()


def remove_batch_dim(tensor: torch.Tensor) -> torch.Tensor:
    """Drop a leading batch dimension of size 1 (anything else is returned unchanged)."""
    return tensor[0] if tensor.dim() > 0 and tensor.shape[0] == 1 else tensor


def get_corner(tensor: Any, n: int = 3) -> Any:
    """The top-left ``n``-cube of a tensor (or FactoredMatrix), for quick printing."""
    from .factored import FactoredMatrix

    if isinstance(tensor, FactoredMatrix):
        return tensor.get_corner(n)
    return tensor[tuple(slice(n) for _ in range(tensor.dim()))]


def test_prompt(
    prompt: str,
    answer: str | list[str],
    model: Any,
    prepend_space_to_answer: bool = True,
    print_details: bool = True,
    prepend_bos: bool | None = None,
    top_k: int = 10,
) -> list[dict[str, Any]]:
    """Print (and return) how the model ranks each answer token after the prompt, TL's sanity check.

    Returns one record per answer token: ``token``, ``rank``, ``logit``, ``prob`` and the ``top_k``
    predictions at that position.
    """
    answers = [answer] if isinstance(answer, str) else list(answer)
    records: list[dict[str, Any]] = []
    for ans in answers:
        if prepend_space_to_answer and not ans.startswith(" "):
            ans = " " + ans
        prompt_tokens = model.to_tokens(prompt, prepend_bos=prepend_bos)
        answer_tokens = model.to_tokens(ans, prepend_bos=False)
        tokens = torch.cat([prompt_tokens, answer_tokens], dim=1)
        n_prompt = prompt_tokens.shape[1]
        with torch.no_grad():
            logits = model(tokens)
        probs = logits.float().softmax(-1)
        if print_details:
            print("Tokenized prompt:", model.to_str_tokens(prompt_tokens))
            print("Tokenized answer:", model.to_str_tokens(answer_tokens))
        for j in range(answer_tokens.shape[1]):
            pos = n_prompt - 1 + j
            target = int(answer_tokens[0, j])
            row = logits[0, pos].float()
            rank = int((row > row[target]).sum())
            top = probs[0, pos].topk(top_k)
            rec = {
                "token": model.to_string(target),
                "rank": rank,
                "logit": float(row[target]),
                "prob": float(probs[0, pos, target]),
                "top": [
                    (model.to_string(int(i)), float(p)) for p, i in zip(top.values, top.indices)
                ],
            }
            records.append(rec)
            if print_details:
                print(
                    f"Performance on answer token:\nRank: {rank:<8} Logit: {rec['logit']:5.2f} "
                    f"Prob: {rec['prob']:6.2%} Token: |{rec['token']}|"
                )
                for k, (tok, p) in enumerate(rec["top"]):
                    print(
                        f"Top {k}th token. Logit: {float(row[top.indices[k]]):5.2f} Prob: {p:6.2%} Token: |{tok}|"
                    )
    return records


test_prompt.__test__ = False  # not a pytest test, despite the name


def tokenize_and_concatenate(
    dataset: Iterable[Any] | Any,
    tokenizer: Any,
    streaming: bool = False,
    max_length: int = 1024,
    column_name: str = "text",
    add_bos_token: bool = True,
) -> torch.Tensor | Any:
    """Tokenize texts, join them with EOS and cut into rows of ``max_length`` tokens (TL).

    ``dataset`` is a list of strings, a list of dicts, or an HF ``datasets.Dataset`` (then a dataset
    with a ``tokens`` column is returned, as TL does); the last incomplete row is dropped. With
    ``add_bos_token`` every row starts with BOS (EOS when the tokenizer has none), like TL.
    """
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    width = max_length - 1 if add_bos_token else max_length
    is_hf = hasattr(dataset, "column_names") and hasattr(dataset, "map")
    texts = [row[column_name] if isinstance(row, dict) else row for row in dataset]
    ids: list[int] = []
    for k, text in enumerate(texts):
        if k:
            ids.append(eos)
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
    n_rows = len(ids) // width
    rows = torch.tensor(ids[: n_rows * width], dtype=torch.long).reshape(n_rows, width)
    if add_bos_token:
        rows = torch.cat([torch.full((n_rows, 1), bos, dtype=torch.long), rows], dim=1)
    if is_hf:
        import datasets

        return datasets.Dataset.from_dict({"tokens": rows.tolist()}).with_format("torch")
    return rows
