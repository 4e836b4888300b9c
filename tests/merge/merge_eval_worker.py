"""Driver for test_merge_evaluate's multi-process test: ``python merge_eval_worker.py OUT N``.

Spawns N CPU processes joined in a gloo group (file:// rendezvous in OUT), each loading the same
model and evaluation sets (:func:`build`) and running :class:`olmokit.merge.evaluate.Evaluator`;
rank r writes ``OUT/rank<r>.json`` with the per-sample scores, the means, how many batches it
scored itself, and the fingerprint of a random zoo pool member both ranks resolved into one cache.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

DATA = Path(__file__).resolve().parents[2] / "configs" / "merge" / "data"
BATCH_SIZE = 2


def build():
    """The model and evaluation sets the test compares against (one process, same code)."""
    from olmokit.loading import load_model, load_tokenizer
    from olmokit.merge.config import DatasetSpec
    from olmokit.merge.datasets import load_datasets

    tok = load_tokenizer()
    specs = [
        DatasetSpec(path=str(DATA / "prose_sharegpt.json"), mode="bigram_loss", samples=5),
        DatasetSpec(path=str(DATA / "code.jsonl"), mode="exact_match", samples=5),
        DatasetSpec(path=str(DATA / "code.jsonl"), mode="nll", samples=3, name="code_nll"),
        DatasetSpec(
            path=str(DATA / "prose_sharegpt.json"),
            mode="diversity",
            samples=3,
            max_new_tokens=6,
            name="prose_div",
        ),
    ]
    return load_model("olmo2-stdlib"), load_datasets(specs, tok)


def suffix_scores(evaluator, model) -> dict:
    """A layer-1 candidate scored twice with the focus on layer 1 (the first pass captures the
    prefix, the second replays it), then undone: the per-sample scores and the replayed passes."""
    from olmokit.family import get_adapter

    evaluator.set_focus(1)
    weight = next(p for p in get_adapter(model).layer(1).parameters() if p.dim() == 2)
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(1.25)
    try:
        first, second = evaluator.sample_scores(), evaluator.sample_scores()
    finally:
        with torch.no_grad():
            weight.copy_(saved)
        evaluator.set_focus(None)
    prefix = evaluator.prefix
    return {"scores": [first, second], "passes": prefix.suffix_passes if prefix else 0}


def grouped_means(evaluator, model) -> list[dict]:
    """Three layer-1 candidates (layer 1's weights scaled by 1.25, 0.8, 1.1) scored with
    ``evaluate_group`` (focus 1), then undone: their means, in order."""
    from olmokit.family import get_adapter

    evaluator.set_focus(1)
    tensors = [p for p in get_adapter(model).layer(1).parameters() if p.dim() == 2]
    saved = [t.detach().clone() for t in tensors]

    def scaled(factor):
        def apply():
            with torch.no_grad():
                for t, s in zip(tensors, saved):
                    t.copy_(s * factor)

        return apply

    try:
        return evaluator.evaluate_group([scaled(f) for f in (1.25, 0.8, 1.1)], scaled(1.0))
    finally:
        evaluator.set_focus(None)


def _worker(rank: int, size: int, out: str) -> None:
    import olmokit.merge.evaluate as ev

    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=size
    )
    try:
        from olmokit.merge.pool import Pool

        pool = Pool(["olmo2-tiny-random@1"], Path(out) / "cache")  # rank 0 writes it, 1 waits
        fingerprint = pool.members[0].fingerprint()
        model, sets = build()
        scored: list[list[int]] = []
        real = ev.merge_metric

        def counting(mode, model, tok, samples, batch_size, **options):
            scored.append([len(s.context_ids) for s in samples])
            return real(mode, model, tok, samples, batch_size, **options)

        ev.merge_metric = counting
        evaluator = ev.Evaluator(model, sets, batch_size=BATCH_SIZE)
        result = {
            "scores": evaluator.sample_scores(),
            "means": evaluator.evaluate(),
            "world": list(ev.world()),
            "batches_scored": len(scored) // 2,  # two calls above
            "suffix": suffix_scores(evaluator, model),
            "grouped": grouped_means(evaluator, model),
            "pool_fingerprint": fingerprint,
            # a flag only rank 1 raises (its clock ran out, say) is every rank's decision
            "any_process": [ev.any_process(rank == 1), ev.any_process(False)],
        }
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
        # both ranks done before either tears gloo down: a rank that destroys the group while the
        # other still holds its connection can abort the other ("terminate called without an
        # active exception", seen once in CI)
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    out_dir, n = sys.argv[1], int(sys.argv[2])
    mp.spawn(_worker, args=(n, out_dir), nprocs=n, join=True)
