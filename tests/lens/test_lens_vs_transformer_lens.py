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


def _pair(model_type, tmp_path):
    """(TL bridge, HookedOlmo) on two copies of one tiny random model (eager attention)."""
    from transformer_lens.model_bridge import TransformerBridge

    model = random_model(model_type, "tiny", seed=0, attn_implementation="eager")
    model.save_pretrained(tmp_path)
    tl_model = random_model(model_type, "tiny", seed=0, attn_implementation="eager")
    bridge = TransformerBridge.boot_transformers(
        str(tmp_path), hf_model=tl_model, device="cpu", tokenizer=_tokenizer()
    )
    return bridge, HookedOlmo(model)


@pytest.mark.parametrize("model_type", ["olmo2", "olmo3", "olmo"])
def test_tl_api_agrees_with_transformer_lens(model_type, tmp_path, tokens):
    """Weights, cache methods and generation with a steering hook, against TL 4.x's bridge.

    Known, documented differences are checked as such: TL's bridge ``W_K``/``W_V`` are the
    un-repeated KV heads (olmokit's ``_W_K``/``_W_V``; olmokit's ``W_K`` repeats them, classic TL's
    convention); on post-norm OLMo-2/3 TL's per-head/per-neuron results are the raw outputs (before
    the post-norm), which olmokit keeps as ``hook_result``/``get_neuron_results`` while its stacks
    pass them through the frozen post-norm so they add up to ``hook_attn_out``/``hook_mlp_out``.
    """
    bridge, ours = _pair(model_type, tmp_path)
    exact = dict(rtol=1e-6, atol=1e-6)
    # weights
    for name, theirs_name in [
        ("W_Q", "W_Q"),
        ("_W_K", "W_K"),
        ("_W_V", "W_V"),
        ("W_O", "W_O"),
        ("W_in", "W_in"),
        ("W_gate", "W_gate"),
        ("W_out", "W_out"),
        ("W_E", "W_E"),
        ("W_U", "W_U"),
    ]:
        torch.testing.assert_close(getattr(ours, name), getattr(bridge, theirs_name), **exact)
    group = ours.cfg.n_heads // ours.cfg.n_kv_heads
    tl_qk = bridge.W_Q @ bridge.W_K.repeat_interleave(group, dim=1).transpose(-2, -1)
    torch.testing.assert_close(ours.QK.AB, tl_qk, rtol=1e-5, atol=1e-6)
    assert ours.cfg.default_prepend_bos == bridge.cfg.default_prepend_bos  # TL's OLMo default

    # cache methods
    with torch.no_grad():
        _, tl_cache = bridge.run_with_cache(tokens)
        _, cache = ours.run_with_cache(tokens)
    calls = [
        ("accumulated_resid", dict(layer=-1, incl_mid=True)),
        ("accumulated_resid", dict(layer=1, incl_mid=True, mlp_input=True)),
        ("accumulated_resid", dict(layer=-1, apply_ln=True, pos_slice=-1)),
        ("decompose_resid", dict(layer=-1)),
        ("decompose_resid", dict(layer=1, mlp_input=True, mode="attn")),
        ("decompose_resid", dict(layer=-1, apply_ln=True, pos_slice=-1)),
    ]
    post = ours.adapter.norm_placement == "post"
    if not post:  # same meaning of a head's/neuron's result only without a post-norm
        calls += [
            ("stack_head_results", dict(layer=-1, pos_slice=-1)),
            ("stack_neuron_results", dict(layer=2)),
        ]
    for fn, kwargs in calls:
        theirs, tl_labels = getattr(tl_cache, fn)(**kwargs, return_labels=True)
        mine, labels = getattr(cache, fn)(**kwargs, return_labels=True)
        assert labels == tl_labels, (fn, kwargs)
        torch.testing.assert_close(
            mine, theirs, rtol=1e-5, atol=1e-5, msg=lambda m, f=fn: f"{f}: {m}"
        )
    if post:
        cache.compute_head_results()
        raw = torch.cat([cache["result", i].movedim(-2, 0) for i in range(ours.cfg.n_layers)])
        torch.testing.assert_close(raw, tl_cache.stack_head_results(layer=-1), rtol=1e-5, atol=1e-5)
        raw_neurons = cache.get_neuron_results(0).movedim(-2, 0)
        torch.testing.assert_close(
            raw_neurons, tl_cache.stack_neuron_results(layer=1), rtol=1e-5, atol=1e-5
        )

    # generation with a steering hook active (greedy). TL 4.3's bridge is compared without its KV
    # cache: with it, its greedy OLMo continuations differ from HF's own ``generate`` even with no
    # hooks (found here; olmokit agrees with HF with and without the cache)
    steer = torch.randn(ours.cfg.d_model, generator=torch.Generator().manual_seed(3))

    def add(resid, hook):
        return resid + steer

    prompt = tokens[:1, :6]
    kwargs = dict(max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False)
    with torch.no_grad(), bridge.hooks(fwd_hooks=[("blocks.0.hook_resid_post", add)]):
        theirs = bridge.generate(prompt, use_past_kv_cache=False, **kwargs)
    with ours.hooks(fwd_hooks=[("blocks.0.hook_resid_post", add)]):
        mine = ours.generate(prompt, **kwargs)
    assert torch.equal(mine, theirs)
    with torch.no_grad():
        hf = ours.model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, **kwargs), hf)
