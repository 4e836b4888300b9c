"""Evaluation sets: conversation files turned, once per run, into tokenised (context, answer) samples.

A record is a conversation, in olmokit's chat shape (``{"messages": [{"role", "content"}, ...]}``) or
ShareGPT's (``{"conversations"|"conversation": [{"from": "system"|"human"|"gpt", "value"}, ...]}``;
both read by :func:`olmokit.data.read_records`, so a bad row is a :class:`DataError` at ``file:line``).
The expected answer is the **last assistant turn**; the context is every turn before it, rendered with
the tokenizer's chat template with the generation prompt appended (``add_generation_prompt=True``),
or with ChatML (:data:`olmokit.data.CHATML_TEMPLATE`'s format) when the tokenizer has no template,
followed by the dataset's ``prompt_suffix``. Turns after the last assistant turn are ignored.

Differences from the original's ``get_context`` / ``get_evaluation_cache``, deliberate: the
tokenizer's own template (the original hard-coded ChatML and dropped earlier assistant turns); the
answer is tokenised on its own, without the original's leading space (the template's generation
prompt already ends the header); special tokens are not added around either piece (a template that
wants a BOS writes it). Samples are the first ``samples`` records in file order, as in the original;
passing a ``seed`` picks a seeded random subset instead (kept in file order).
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from typing import Any

from ..data.formatting import chatml_segments
from ..data.readers import Record, read_records
from ..errors import DataError
from ..eval.merge_metrics import ContextResponse
from .config import DatasetSpec

__all__ = ["EvalSet", "format_context", "load_dataset", "load_datasets", "record_sample"]

#: Shortest answer (in tokens) each mode can score; bigram_loss pairs neighbouring tokens.
_MIN_ANSWER = {"bigram_loss": 2, "exact_match": 1, "nll": 1, "diversity": 0}


@dataclass
class EvalSet:
    """One dataset, ready to score: name, metric mode, tokenised samples, metric options.

    ``sources`` holds each sample's ``file:line`` and ``tokenizer`` the tokenizer that built the
    samples (the metrics need its pad id, and ``diversity`` decodes with it).
    """

    name: str
    mode: str
    samples: list[ContextResponse]
    options: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    tokenizer: Any = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.samples)


def format_context(messages: list[dict[str, str]], tokenizer: Any) -> str:
    """The prompt text for ``messages`` (the turns before the answer), ending where the assistant's
    answer begins: the tokenizer's chat template with the generation prompt, else ChatML."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
        if not isinstance(text, str):  # some tokenizers return a list for batched input
            raise DataError("the tokenizer's chat template did not render to text")
        return text
    return "".join(text for text, _ in chatml_segments(messages)) + "<|im_start|>assistant\n"


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def record_sample(
    record: Record, tokenizer: Any, mode: str, prompt_suffix: str = ""
) -> ContextResponse:
    """One conversation as a :class:`ContextResponse`; :class:`DataError` at the record's
    ``file:line`` when it has no assistant turn, an empty answer or one too short for ``mode``."""
    if record.kind != "chat":
        raise DataError(
            f"{record.source}: expected a conversation ('messages' or ShareGPT 'conversations'), "
            f"got a {record.kind} record"
        )
    messages = record.messages
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise DataError(f"{record.source}: the conversation has no assistant turn (the answer)")
    context = format_context(messages[:last], tokenizer) + prompt_suffix
    answer = messages[last]["content"]
    context_ids, answer_ids = _ids(tokenizer, context), _ids(tokenizer, answer)
    if not context_ids:
        raise DataError(f"{record.source}: the prompt is empty after formatting")
    need = _MIN_ANSWER.get(mode, 1)
    if len(answer_ids) < need:
        raise DataError(
            f"{record.source}: the answer has {len(answer_ids)} token(s); mode {mode} needs at "
            f"least {need}"
        )
    return ContextResponse(context_ids, answer_ids)


def load_dataset(spec: DatasetSpec, tokenizer: Any, seed: int | None = None) -> EvalSet:
    """Read, select and tokenise one dataset (see the module docstring for the format and rules).

    Every record is validated (not only the selected ones), so a broken file fails before any
    evaluation. A file with fewer records than ``spec.samples`` uses them all, with a warning.
    """
    records = read_records(spec.path)
    n = min(spec.samples, len(records))
    if n < spec.samples:
        warnings.warn(
            f"{spec.path}: {len(records)} records, fewer than samples={spec.samples}; using all",
            stacklevel=2,
        )
    for r in records:
        if r.kind != "chat":
            raise DataError(
                f"{r.source}: expected a conversation ('messages' or ShareGPT 'conversations'), "
                f"got a {r.kind} record"
            )
    if seed is None:
        chosen = records[:n]
    else:
        picked = sorted(random.Random(seed).sample(range(len(records)), n))
        chosen = [records[i] for i in picked]
    samples = [record_sample(r, tokenizer, spec.mode, spec.prompt_suffix) for r in chosen]
    options: dict[str, Any] = {}
    if spec.mode == "diversity":
        options = {
            "max_new_tokens": spec.max_new_tokens,
            "penalized_scripts": tuple(spec.script_penalty),
        }
    return EvalSet(
        str(spec.name),
        spec.mode,
        samples,
        options,
        [r.source for r in chosen],
        tokenizer,
    )


def load_datasets(
    specs: list[DatasetSpec], tokenizer: Any, seed: int | None = None
) -> list[EvalSet]:
    """:func:`load_dataset` for each spec, in order (the evaluation cache of a run)."""
    return [load_dataset(spec, tokenizer, seed) for spec in specs]
