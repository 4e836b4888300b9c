"""``olmokit zoo build``: the reproducible recipe behind the shipped models.

Corpus (CPython's own text) → byte-level BPE tokenizer → small OLMo pretrained with ``Trainer`` →
held-out loss vs a unigram baseline → model directory (fp16 safetensors, tokenizer, model card) that
stock ``from_pretrained`` loads. Work files (token streams, Trainer checkpoints) live in ``work_dir`` so
a killed build resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ...data.stdlib import build_corpus, python_fingerprint
from ...files import atomic_directory, atomic_save_safetensors, atomic_write_json, load_safetensors
from ..presets import ZOO_VOCAB_SIZE, make_config
from ..registry import shipped_path
from .card import render_model_card
from .circuits import MixedBlocks, RepeatedSequences, circuit_friendly_init, induction_probe
from .config import ZooBuildConfig
from .pretrain import (
    BlockDataset,
    heldout_loss,
    pretrain,
    tokenize_documents,
    unigram_cross_entropy,
)
from .tokenizer import train_tokenizer

__all__ = ["build_zoo_model"]


def _token_streams(
    cfg: ZooBuildConfig, work: Path, log
) -> tuple[Any, torch.Tensor, torch.Tensor, dict]:
    tok_dir, streams = work / "tokenizer", work / "tokens.safetensors"
    corpus = build_corpus()
    if cfg.max_corpus_docs is not None:
        corpus.documents = corpus.documents[: cfg.max_corpus_docs]
    stats = corpus.stats()
    if tok_dir.is_dir() and streams.is_file():
        from transformers import AutoTokenizer

        log("reusing tokenizer and token streams from", work)
        tensors = load_safetensors(streams)
        return AutoTokenizer.from_pretrained(tok_dir), tensors["train"], tensors["heldout"], stats
    log(f"corpus: {stats}")
    train_docs, held_docs = corpus.split(False), corpus.split(True)
    if cfg.tokenizer is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(shipped_path(cfg.tokenizer))
    else:
        tokenizer = train_tokenizer(
            (d.text for d in train_docs), vocab_size=cfg.vocab_size or ZOO_VOCAB_SIZE
        )
    train = tokenize_documents(tokenizer, train_docs, repeat_prose=cfg.repeat_prose)
    held = tokenize_documents(tokenizer, held_docs)
    tokenizer.save_pretrained(tok_dir)
    atomic_save_safetensors(streams, {"train": train, "heldout": held})
    return tokenizer, train, held, stats


def build_zoo_model(
    cfg: ZooBuildConfig, out_dir: str | Path, work_dir: str | Path | None = None, log=print
) -> dict[str, Any]:
    """Build (or resume building) a zoo model into ``out_dir``; returns the build report."""
    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir else out_dir.parent / f".{out_dir.name}.work"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tokenizer, train_ids, held_ids, stats = _token_streams(cfg, work, log)
    vocab = len(tokenizer)
    text_ds, held_ds = BlockDataset(train_ids, cfg.seq_len), BlockDataset(held_ids, cfg.seq_len)
    train_ds = text_ds
    n_repeats = round(len(text_ds) * cfg.repeat_share / (1 - cfg.repeat_share))
    if n_repeats:
        longest = cfg.repeat_max_len or cfg.seq_len // 2
        repeats = RepeatedSequences(
            n_repeats, cfg.seq_len, vocab, cfg.repeat_min_len, longest, cfg.seed
        )
        train_ds = MixedBlocks(text_ds, repeats)
    log(
        f"tokens: train {len(train_ids):,}, held-out {len(held_ids):,}; blocks {len(text_ds)}"
        f" text + {n_repeats} repeated-random / {len(held_ds)} held out"
    )

    from transformers import AutoModelForCausalLM

    config = make_config(
        cfg.model_type,
        cfg.size,
        vocab_size=vocab,
        max_position_embeddings=max(512, cfg.seq_len),
        **cfg.architecture,
    )
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    circuit_friendly_init(model, cfg.embedding_init_std, cfg.post_norm_init, cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {cfg.model_type} {cfg.size}, {n_params:,} parameters")
    t_train = time.time()
    result = pretrain(
        model,
        train_ds,
        work / "checkpoints",
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        seed=cfg.seed,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        save_steps=max(50, cfg.steps // 12),
    )
    train_seconds = time.time() - t_train

    # Evaluate the weights exactly as shipped (rounded to save_dtype), in fp32 arithmetic.
    save_dtype = getattr(torch, cfg.save_dtype)
    model = model.to(save_dtype).to(torch.float32)
    held_loss = heldout_loss(model, held_ds)
    unigram = unigram_cross_entropy(train_ids, held_ids[: 400 * cfg.seq_len], vocab)
    probe = induction_probe(model)
    log(f"induction probe: top heads {probe.top(3)}; copy gain {probe.copy_gain:.3f} nats")
    report = {
        "name": cfg.name,
        "build_config": cfg.as_dict(),
        "python": python_fingerprint(),
        "torch": torch.__version__,
        "corpus": stats,
        "train_tokens": int(len(train_ids)),
        "heldout_tokens": int(len(held_ids)),
        "tokens_seen": int(result["steps"] * cfg.batch_size * cfg.seq_len),
        "parameters": n_params,
        "final_train_loss": result["train_loss"],
        "heldout_loss": held_loss,
        "unigram_heldout_loss": unigram,
        "repeated_sequences": n_repeats,
        "induction_probe": probe.as_dict(),
        "train_wall_seconds": train_seconds,
        "total_wall_seconds": time.time() - t0,
        "resumed_from": result["resumed_from"],
    }
    model.to(save_dtype)
    model.config.use_cache = True  # Trainer switches it off for training; generation wants it on
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(render_model_card(report), encoding="utf-8")
        atomic_write_json(tmp / "build_report.json", report)
        cfg.to_yaml(
            tmp / "build_config.yaml"
        )  # `olmokit zoo build --config` this file to reproduce
    log(
        json.dumps(
            {k: report[k] for k in ("heldout_loss", "unigram_heldout_loss", "total_wall_seconds")}
        )
    )
    return report
