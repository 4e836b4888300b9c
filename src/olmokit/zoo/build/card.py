"""The model card written next to every zoo model."""

from __future__ import annotations

from typing import Any

__all__ = ["render_model_card"]


def render_model_card(report: dict[str, Any]) -> str:
    c, cfg = report["corpus"], report["build_config"]
    ratio = report["unigram_heldout_loss"] / report["heldout_loss"]
    return f"""---
license: apache-2.0
library_name: transformers
tags: [olmo, olmokit, tiny]
---
# {report["name"]}

A small {cfg["model_type"]} model pretrained by `olmokit zoo build` on text that ships with
{report["python"]}: the `pydoc_data` topics, standard-library docstrings (prose) and the standard
library's own sources (code, tests excluded). It exists so every olmokit tool works offline; it is not
a useful assistant.

| | |
|---|---|
| parameters | {report["parameters"]:,} |
| architecture | {cfg["model_type"]} `{cfg["size"]}` preset{_overrides(cfg)}, stored as {cfg["save_dtype"]} |
| tokenizer | {_tokenizer(cfg)} |
| corpus (train) | {c["train_prose_docs"]:,} prose docs / {c["train_prose_chars"]:,} chars; {c["train_code_docs"]:,} code files / {c["train_code_chars"]:,} chars |
| corpus (held out, 1 source in 10 by hash) | {c["heldout_prose_docs"]:,} prose docs / {c["heldout_prose_chars"]:,} chars; {c["heldout_code_docs"]:,} code files / {c["heldout_code_chars"]:,} chars |
| tokens | train stream {report["train_tokens"]:,}; held-out {report["heldout_tokens"]:,} |
| tokens seen | {report["tokens_seen"]:,} ({cfg["steps"]} steps × {cfg["batch_size"]} × {cfg["seq_len"]}) |
| training wall time | {report["train_wall_seconds"]:.0f} s (total build {report["total_wall_seconds"]:.0f} s, torch {report["torch"]}) |
| **held-out loss** | **{report["heldout_loss"]:.3f} nats/token** |
| unigram baseline | {report["unigram_heldout_loss"]:.3f} nats/token (add-one smoothed train unigram; {ratio:.2f}× the model's loss) |

{_circuits(report)}
Reproduce with `olmokit zoo build {report["name"]}` (same CPython and torch give the same corpus and
split).
"""


def _overrides(cfg: dict[str, Any]) -> str:
    arch = cfg.get("architecture") or {}
    return f" with {', '.join(f'{k}={v}' for k, v in arch.items())}" if arch else ""


def _tokenizer(cfg: dict[str, Any]) -> str:
    if cfg.get("tokenizer"):
        return f"the tokenizer of `{cfg['tokenizer']}` (same token ids)"
    return f"byte-level BPE of {cfg.get('vocab_size') or 4096} tokens trained on the corpus"


def _circuits(report: dict[str, Any]) -> str:
    """The induction probe's numbers, as the build measured them (nothing here is typed by hand)."""
    probe = report.get("induction_probe")
    if not probe:
        return ""
    cfg = report["build_config"]
    share = cfg.get("repeat_share", 0.0)
    rows = "\n".join(
        f"| L{t['layer']}H{t['head']} | {t['induction']:.3f} | {t['previous_token']:.3f} |"
        for t in probe["top"]
    )
    n, batch = probe["seq_len"], probe["batch"]
    uniform = sum(1 / (q + 1) for q in range(n, 2 * n)) / n
    data = (
        f"{share:.0%} of the training sequences were a random token string repeated to fill the "
        f"sequence (loss on the repeats only; {report.get('repeated_sequences', 0):,} such "
        "sequences in the mix), which grows induction heads.\n\n"
        if share
        else ""
    )
    init = []
    if cfg.get("embedding_init_std"):
        init.append(f"input embeddings drawn with std {cfg['embedding_init_std']}")
    if cfg.get("post_norm_init"):
        init.append(f"post-sublayer norm weights started at {cfg['post_norm_init']}")
    if init:
        data += (
            f"Initialisation: {' and '.join(init)} (`circuit_friendly_init`: a post-norm model "
            "otherwise drowns a token's identity under its unit-scale sublayer outputs).\n\n"
        )
    return f"""
## Circuits: induction heads

{data}Measured by the build on {batch} random strings of {n} ordinary tokens repeated once (the
probe of `olmokit lens induction`): a head's induction score is its mean attention from each
token of the second copy to the token after that token's first occurrence; a head attending
uniformly to every earlier token would score {uniform:.3f}. The loss drops by
{probe["copy_gain"]:.3f} nats/token from the first copy to the second (in-context copying).

| head | induction score | previous-token score |
|---|---|---|
{rows}
"""
