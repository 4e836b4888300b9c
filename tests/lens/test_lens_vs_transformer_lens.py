"""Cross-check against the real TransformerLens (4.x TransformerBridge) on the same model.

Skips cleanly without the ``[bench]`` extra. Both tools read the same HF model in eager mode, so every
hook both define must agree to fp32 tolerance. Naming differences are mapped explicitly: TL's
``attn.hook_q/k`` are the raw projections (before q/k-norm and RoPE); olmokit's ``hook_q/k`` are TL's
``hook_rot_q/rot_k``. olmokit's ``attn/mlp.hook_raw_out`` are TL's ``attn/mlp.hook_out``.
"""

from __future__ import annotations

import pytest
import torch

from olmokit.lens import HookedOlmo
from olmokit.zoo.presets import random_model

pytest.importorskip("transformer_lens")

#: olmokit name suffix -> TL name suffix where the names differ (same values)
RENAMED = {
    "attn.hook_q": "attn.hook_rot_q",
    "attn.hook_k": "attn.hook_rot_k",
    "attn.hook_raw_out": "attn.hook_out",
    "mlp.hook_raw_out": "mlp.hook_out",
}
#: TL names whose meaning differs from ours (compared under the renamed key instead)
DIFFERENT_MEANING = {"attn.hook_q", "attn.hook_k"}


def _tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(4096)}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="t0")), eos_token="t0", pad_token="t1"
    )


@pytest.mark.parametrize("model_type", ["olmo2", "olmo3", "olmo"])
def test_cached_values_agree_with_transformer_lens(model_type, tmp_path, tokens):
    from transformer_lens.model_bridge import TransformerBridge

    # Two copies with identical weights: booting the bridge rewires the HF model it is given.
    model = random_model(model_type, "tiny", seed=0, attn_implementation="eager")
    model.save_pretrained(tmp_path)
    tl_model = random_model(model_type, "tiny", seed=0, attn_implementation="eager")
    bridge = TransformerBridge.boot_transformers(
        str(tmp_path), hf_model=tl_model, device="cpu", tokenizer=_tokenizer()
    )
    hooked = HookedOlmo(model)
    with torch.no_grad():
        tl_logits, tl_cache = bridge.run_with_cache(tokens)
        logits, cache = hooked.run_with_cache(tokens)
    torch.testing.assert_close(logits, tl_logits, rtol=0, atol=1e-5)

    compared = []
    for name, ours in cache.items():
        prefix, _, suffix = name.partition(".") if name.startswith("blocks.") else ("", "", name)
        if prefix:
            layer, _, short = suffix.partition(".")
            tl_name = f"blocks.{layer}.{RENAMED.get(short, short)}"
            if short in DIFFERENT_MEANING and RENAMED.get(short) is None:
                continue
        else:
            tl_name = name
        if tl_name not in tl_cache.keys():
            continue
        theirs = tl_cache[tl_name]
        if theirs.shape != ours.shape:
            theirs = theirs.reshape(ours.shape)
        if name.endswith(
            "hook_attn_scores"
        ):  # masked fill values differ by convention; compare the rest
            keep = cache[name.replace("hook_attn_scores", "hook_pattern")] > 0
            ours, theirs = ours[keep], theirs[keep]
        torch.testing.assert_close(
            ours, theirs, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}"
        )
        compared.append(name)
    must = [
        "hook_embed",
        "blocks.0.hook_resid_pre",
        "blocks.0.hook_resid_mid",
        "blocks.0.hook_resid_post",
        "blocks.0.hook_attn_out",
        "blocks.0.hook_mlp_out",
        "blocks.0.attn.hook_q",
        "blocks.0.attn.hook_k",
        "blocks.0.attn.hook_v",
        "blocks.0.attn.hook_z",
        "blocks.0.attn.hook_pattern",
        "blocks.0.mlp.hook_post",
        "ln_final.hook_normalized",
    ]
    missing = [m for m in must if m not in compared]
    assert not missing, f"not compared: {missing}"
