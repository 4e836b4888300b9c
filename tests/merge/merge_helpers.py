"""Tiny merge pools for the merge tests: seeded random OLMo-2 models saved as HF directories, and
small conversation files to score them on. Importable by name (``from merge_helpers import ...``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

#: Short ShareGPT conversations (prose and code flavoured), the answers a few tokens long.
CONVERSATIONS = [
    ("What does len() return?", "The number of items in a container."),
    ("Name a Python keyword.", "def is a keyword used to define functions."),
    ("How do you open a file?", "Use open(path) inside a with statement."),
    ("What is a list?", "A mutable sequence of objects."),
    ("Write an empty function.", "def f():\n    pass"),
    ("Import the os module.", "import os"),
]


def make_pool(
    root: Path,
    seeds: tuple[int, ...] = (0, 1, 2),
    tied: bool = False,
    scale: float | None = None,
    model_type: str = "olmo2",
) -> list[str]:
    """Save one tiny random model per seed (with the zoo tokenizer) under ``root``; return the dirs.

    ``scale`` multiplies every weight of the models after the first (a deliberately different pool
    member, e.g. one that is much worse)."""
    from olmokit.loading import load_tokenizer, save_model
    from olmokit.zoo.presets import random_model

    tok = load_tokenizer("olmo2-tiny-random")
    out = []
    for i, seed in enumerate(seeds):
        model = random_model(model_type, "tiny", seed=seed, tie_word_embeddings=tied)
        if scale is not None and i > 0:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(scale)
        path = root / f"m{seed}"
        save_model(model, path, tok)
        out.append(str(path))
    return out


def write_sharegpt(path: Path, rows=CONVERSATIONS) -> Path:
    records = [
        {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
        for q, a in rows
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def merge_config(tmp_path: Path, models: list[str], **overrides):
    """A small MergeConfig over ``models`` with two datasets (bigram_loss and nll)."""
    from olmokit.merge.config import MergeConfig

    a = write_sharegpt(tmp_path / "prose.jsonl", CONVERSATIONS[:4])
    b = write_sharegpt(tmp_path / "code.jsonl", CONVERSATIONS[2:])
    data = dict(
        models=models,
        datasets=[
            {"path": str(a), "mode": "bigram_loss", "samples": 4},
            {"path": str(b), "mode": "nll", "samples": 4},
        ],
        output_dir=str(tmp_path / "run"),
        batch_size=4,
    )
    data.update(overrides)
    return MergeConfig.from_dict(data)


class DictCache:
    """The evaluation-cache interface the search uses (get/put with hit and miss counters)."""

    def __init__(self):
        self.data: dict[str, dict] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key):
        if key in self.data:
            self.hits += 1
            return dict(self.data[key])
        self.misses += 1
        return None

    def put(self, key, metrics):
        self.data[key] = dict(metrics)
