"""Pretraining a zoo model with HF ``Trainer`` (progress bar, checkpoints, kill-and-resume for free)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ...data.stdlib import Document
from ...eval.nll import sequence_nll
from ..presets import EOS_ID

__all__ = [
    "BlockDataset",
    "tokenize_documents",
    "pretrain",
    "heldout_loss",
    "unigram_cross_entropy",
]


def tokenize_documents(
    tokenizer: Any, docs: Sequence[Document], repeat_prose: int = 1
) -> torch.Tensor:
    """One flat int32 token stream: documents joined by EOS (prose optionally repeated to upweight it)."""
    texts = []
    for d in docs:
        texts.extend([d.text] * (repeat_prose if d.kind == "prose" else 1))
    ids: list[int] = []
    batch = 256
    for start in range(0, len(texts), batch):
        enc = tokenizer(texts[start : start + batch], add_special_tokens=False)["input_ids"]
        for seq in enc:
            ids.extend(seq)
            ids.append(EOS_ID)
    return torch.tensor(ids, dtype=torch.int32)


class BlockDataset(Dataset):
    """Non-overlapping ``seq_len`` blocks of a token stream, as causal-LM examples."""

    def __init__(self, stream: torch.Tensor, seq_len: int):
        n = (len(stream) // seq_len) * seq_len
        self.blocks = stream[:n].view(-1, seq_len).long()

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        block = self.blocks[i]
        return {"input_ids": block, "labels": block}


def pretrain(
    model: torch.nn.Module,
    train: Dataset,
    work_dir: Path,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    warmup_steps: int = 50,
    save_steps: int = 100,
    weight_decay: float = 0.1,
) -> dict[str, Any]:
    """Train with ``Trainer``; resumes from the newest checkpoint in ``work_dir`` if one exists."""
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    args = TrainingArguments(
        output_dir=str(work_dir),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        logging_steps=max(1, steps // 20),
        save_steps=save_steps,
        save_total_limit=1,
        report_to=[],
        seed=seed,
        data_seed=seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train)
    last = get_last_checkpoint(str(work_dir)) if work_dir.exists() else None
    result = trainer.train(resume_from_checkpoint=last)
    return {
        "train_loss": float(result.training_loss),
        "steps": int(result.global_step),
        "resumed_from": last,
        "log_history": trainer.state.log_history,
    }


@torch.no_grad()
def heldout_loss(
    model: torch.nn.Module, data: BlockDataset, batch_size: int = 16, max_blocks: int = 400
) -> float:
    """Mean next-token cross-entropy (nats/token) over up to ``max_blocks`` held-out blocks.

    Scored by :func:`olmokit.eval.sequence_nll` (eval mode, float32 log-softmax, mode restored).
    """
    blocks = data.blocks[:max_blocks]
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        nll = sequence_nll(model, blocks[start : start + batch_size])
        total += float(nll.sum())
        count += nll.numel()
    return total / count


def unigram_cross_entropy(train: torch.Tensor, heldout: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of held-out tokens under the add-one-smoothed train unigram model."""
    counts = Counter(train.tolist())
    total = len(train) + vocab_size
    log_probs = {t: math.log((counts.get(t, 0) + 1) / total) for t in set(heldout.tolist())}
    return -sum(log_probs[t] for t in heldout.tolist()) / len(heldout)
