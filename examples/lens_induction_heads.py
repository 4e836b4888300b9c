"""Find the induction heads of the zoo's ``olmo2-induction`` with the lens, TransformerLens style.

    python examples/lens_induction_heads.py [--out runs/examples/lens]

Repeated random tokens, the attention patterns cached with ``run_with_cache``, each head's mean
attention from a token of the second copy to the token after its first occurrence (the induction
score), and a picture of the top head's pattern: a stripe one token right of the diagonal offset.
Seconds on a CPU, offline.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from olmokit import plots
from olmokit.lens import HookedOlmo
from olmokit.lens.heads import induction_score, repeated_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/examples/lens")
    parser.add_argument("--model", default="olmo2-induction")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model = HookedOlmo.from_pretrained(args.model)
    result = induction_score(model, seq_len=32, batch=8, seed=0)
    print("layer head  induction  previous-token")
    for layer, head, score in result.top(5):
        print(
            f"{layer:5d} {head:4d}  {score:9.3f}  {float(result.previous_token[layer, head]):14.3f}"
        )
    print(f"loss drop from the first copy to the second: {result.copy_gain:.2f} nats/token")

    layer, head, _ = result.top(1)[0]
    tokens = repeated_tokens(model.adapter.vocab_size, 32, 1, seed=0, low=4)
    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.attn.hook_pattern")
    pattern = cache[("pattern", layer)][0, head]
    png = plots.plot_attention_pattern(
        pattern, None, out / f"L{layer}H{head}.png", title=f"L{layer}H{head}", mark_offset=1 - 32
    )
    stripe = pattern.diagonal(offset=1 - 32)[1:].mean()
    print(f"wrote {png} (mean attention on the induction stripe: {float(stripe):.3f})")
    assert torch.isfinite(pattern).all()


if __name__ == "__main__":
    main()
