"""Can a memory tell one MQAR key from another in the frozen base's hidden states? (docs/memory.md,
"Why associative recall stayed at chance").

Run: ``python benchmarks/memory_mqar_keys.py [--plain-base DIR] [--circuit-base DIR]`` (seconds once
both 3-layer MQAR task bases exist; each is built, about a minute to ten, when its directory is empty).

For the plain base (embeddings at std 0.02, the config's) and the circuit-friendly one (embeddings at
std 1.0, post-norms at 0.1: what ``benchmarks/memory_passkey.py`` builds now), a memory is attached at
layer 1 and at layer 2 with ``qk_init: tied`` and ``key_conv_init: previous_token`` — so at step 0 a
query at a key token and the key written at that pair's value are the same projection of the key
token's hidden state in two contexts. On 8-pair MQAR examples (queries 8-9 windows after the pairs)
it prints, per base, layer and memory head, the mean cosine of each query to its own pair's key and
to the other pairs' keys: a memory can only address by key where the first clearly exceeds the second.
The last line is ``RESULT {json}`` with ``"<base>_layer<L>": {"own": .., "other": ..}`` (heads
averaged).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from olmokit.memory import attach_memory
from olmokit.memory.demo import (
    DemoBaseSettings,
    DemoMemorySettings,
    demo_memory_settings,
    load_demo_base,
    make_demo_base,
    mqar_set,
)
from olmokit.memory.model import iter_memory_layers

PLAIN = DemoBaseSettings(num_layers=3, steps=2000)
CIRCUIT = DemoBaseSettings(num_layers=3, steps=2000, embedding_init_std=1.0, post_norm_init=0.1)


def key_cosines(base_dir: str, settings: DemoBaseSettings, layer: int, n: int) -> list[dict]:
    """Per memory head: mean cosine of each query to its own pair's key and to the others'."""
    base = make_demo_base(base_dir, settings, log=print)
    w = settings.window
    mem = DemoMemorySettings(
        layer=layer, heads=2, hidden=128, qk_init="tied", key_conv_init="previous_token"
    )
    torch.manual_seed(0)
    mm = attach_memory(load_demo_base(base), demo_memory_settings(w, mem)).eval()
    ((_, memory_layer),) = iter_memory_layers(mm)
    nm = memory_layer.memory
    seen: dict[str, list[torch.Tensor]] = {"q": [], "k": []}
    query, write = nm._query, nm._write_inputs

    def record_query(xn, state):
        out = query(xn, state)
        seen["q"].append(out[0])
        return out

    def record_write(xn, state):
        out = write(xn, state)
        seen["k"].append(out[0])
        return out

    nm._query, nm._write_inputs = record_query, record_write
    examples = mqar_set(settings.vocab, w, 8, (8 * w, 9 * w), n, 0, "mq-keys").examples()
    ids = torch.stack([e.input_ids for e in examples])
    with torch.no_grad():
        mm(ids)
    heads = nm.config.heads
    q = torch.cat(seen["q"], 1).view(len(examples), heads, ids.shape[1], -1)
    k = torch.cat(seen["k"], 1).view(len(examples), heads, ids.shape[1], -1)
    out = []
    for h in range(heads):
        own, other = [], []
        for b, e in enumerate(examples):
            queries = [a - 1 for a in e.answer_positions]  # the key token of each query
            sim = q[b, h, queries] @ k[b, h, e.evidence_positions].T  # l2-normalised: cosines
            mask = torch.eye(len(queries), dtype=torch.bool)
            own.append(sim[mask])
            other.append(sim[~mask])
        out.append({"own": float(torch.cat(own).mean()), "other": float(torch.cat(other).mean())})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plain-base", default="runs/memory-passkey/base-mqar-plain")
    p.add_argument("--circuit-base", default="runs/memory-passkey/base-mqar")
    p.add_argument("--examples", type=int, default=8)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    result: dict[str, Any] = {}
    print("| base | layer | head | cos(query, own key) | cos(query, other keys) |")
    print("|---|---|---|---:|---:|")
    for name, base_dir, settings in (
        ("plain", args.plain_base, PLAIN),
        ("circuit", args.circuit_base, CIRCUIT),
    ):
        for layer in (1, 2):
            per_head = key_cosines(base_dir, settings, layer, args.examples)
            for h, c in enumerate(per_head):
                print(f"| {name} | {layer} | {h} | {c['own']:.3f} | {c['other']:.3f} |")
            result[f"{name}_layer{layer}"] = {
                key: round(sum(c[key] for c in per_head) / len(per_head), 4)
                for key in ("own", "other")
            }
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
