# ruff: noqa: E731  (the notebook names its hook filters with lambdas)
"""TransformerLens's *Exploratory Analysis Demo* (IOI), ported to OLMo-2 and run as a test.

Written for olmokit from the notebook's cells (``demos/Exploratory_Analysis_Demo.ipynb``,
TransformerLens dev snapshot 4cd36aae), in order, with only these changes:

* the loading line: ``HookedTransformer.from_pretrained("olmo2-stdlib", <TL's processing flags>)``;
  three of the four flags do not apply to post-norm OLMo-2 and must warn (checked);
* prompts: the IOI names become single tokens of the zoo vocabulary (" self"/" cls", " name"/" path"),
  in templates that tokenize to equal lengths as GPT-2's do; two templates instead of four (time);
* GPT-2 constants: layers 5/8 → 1/2, layer groups 7/9 → 1/3, induction heads [81, 65] → [17, 9],
  token ids from [100, 4000);
* one line of OLMo maths: the direct-path patch divides by the *attention-input* norm scale
  (``ln1.hook_scale``); OLMo-2 has no norm in front of attention (post-norm), so that scale is 1 — and
  asking the cache for ``ln1`` raises, naming the valid hooks (checked);
* plotting (plotly, circuitsvis, HTML) is a no-op that converts its input with ``utils.to_numpy``;
  the ``if not IN_GITHUB`` cells are skipped, as in TL's own CI.

Numbers the notebook checks by eye are asserted: the logit difference recomputed from the final
residual equals the model's, and the direct logit attributions of the layers, and of the heads + MLPs +
embedding, sum to it.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

import olmokit.lens.utils as utils
from olmokit.lens import ActivationCache, HookedTransformer

IN_GITHUB = True  # as in TransformerLens's CI: the long "if not IN_GITHUB" sweeps are skipped


@pytest.fixture(scope="module", autouse=True)
def _needs_zoo():
    from olmokit.zoo.registry import ZOO

    if not ZOO["olmo2-stdlib"].available:
        pytest.skip("zoo model not built")


def imshow(tensor, show=True, **kwargs):
    return utils.to_numpy(tensor)


line = imshow


def scatter(x, y, **kwargs):
    return utils.to_numpy(x), utils.to_numpy(y)


def einsum_last(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``einsum("... batch d_model, batch d_model -> ...")``."""
    return (a * b).sum(-1).sum(-1)


@torch.no_grad()
def test_exploratory_analysis_demo_runs_on_olmo2():
    torch.set_grad_enabled(False)
    try:
        _demo()
    finally:
        torch.set_grad_enabled(True)


def _demo():  # noqa: PLR0915 - one notebook, cell by cell
    # [18] loading line changed; TL's flags: three cannot apply to post-norm OLMo-2 and say why
    with pytest.warns(UserWarning) as record:
        model = HookedTransformer.from_pretrained(
            "olmo2-stdlib",
            center_unembed=True,
            center_writing_weights=True,
            fold_ln=True,
            refactor_factored_attn_matrices=True,
        )
    warned = " ".join(str(w.message) for w in record)
    for flag in ("fold_ln", "center_writing_weights", "refactor_factored_attn_matrices"):
        assert f"{flag}=True is not applied" in warned
    assert "center_unembed=True" not in warned
    torch.testing.assert_close(
        model.W_U.mean(-1), torch.zeros(model.cfg.d_model), atol=1e-6, rtol=0
    )
    model.set_use_attn_result(True)
    device: torch.device = utils.get_device()
    device = torch.device("cpu")  # the zoo model is loaded on the CPU

    # [20]
    example_prompt = "When self and cls went to the shops, cls gave the bag to"
    example_answer = " self"
    records = utils.test_prompt(example_prompt, example_answer, model, prepend_bos=True)
    assert len(records) == 1 and records[0]["token"] == " self"

    # [22]
    # two of the notebook's four templates (the sweeps below run one forward per layer, position and
    # head: half the batch halves the test's time)
    prompt_format = [
        "When self and cls went to the shops,{} gave the bag to",
        "When name and path went to the shops,{} gave an apple to",
    ]
    names = [(" self", " cls"), (" name", " path")]
    prompts, answers, answer_tokens = [], [], []
    for i in range(len(prompt_format)):
        for j in range(2):
            answers.append((names[i][j], names[i][1 - j]))
            answer_tokens.append(
                (model.to_single_token(answers[-1][0]), model.to_single_token(answers[-1][1]))
            )
            prompts.append(prompt_format[i].format(answers[-1][1]))
    answer_tokens = torch.tensor(answer_tokens).to(device)
    print(prompts)
    print(answers)

    # [24]
    for prompt in prompts:
        str_tokens = model.to_str_tokens(prompt)
        print("Prompt length:", len(str_tokens))
        print("Prompt as tokens:", str_tokens)
        assert len(str_tokens) == 20

    # [26]
    tokens = model.to_tokens(prompts, prepend_bos=True)
    original_logits, cache = model.run_with_cache(tokens)

    # [28]
    def logits_to_ave_logit_diff(logits, answer_tokens, per_prompt=False):
        final_logits = logits[:, -1, :]
        answer_logits = final_logits.gather(dim=-1, index=answer_tokens)
        answer_logit_diff = answer_logits[:, 0] - answer_logits[:, 1]
        if per_prompt:
            return answer_logit_diff
        return answer_logit_diff.mean()

    print(
        "Per prompt logit difference:",
        logits_to_ave_logit_diff(original_logits, answer_tokens, per_prompt=True).round(decimals=3),
    )
    original_average_logit_diff = logits_to_ave_logit_diff(original_logits, answer_tokens)

    # [34]
    W_U = model.unembed.W_U
    answer_residual_directions = W_U[:, answer_tokens].permute(1, 2, 0)
    print("Answer residual directions shape:", answer_residual_directions.shape)
    torch.testing.assert_close(
        answer_residual_directions, model.tokens_to_residual_directions(answer_tokens)
    )
    logit_diff_directions = answer_residual_directions[:, 0] - answer_residual_directions[:, 1]

    # [36]
    final_residual_stream = cache["resid_post", -1]
    final_token_residual_stream = final_residual_stream[:, -1, :]
    scaled_final_token_residual_stream = cache.apply_ln_to_stack(
        final_token_residual_stream, layer=-1, pos_slice=-1
    )
    average_logit_diff = einsum_last(
        scaled_final_token_residual_stream, logit_diff_directions
    ) / len(prompts)
    print("Calculated average logit diff:", round(average_logit_diff.item(), 3))
    print("Original logit difference:", round(original_average_logit_diff.item(), 3))
    torch.testing.assert_close(
        average_logit_diff, original_average_logit_diff, rtol=1e-4, atol=1e-4
    )

    # [39]
    def residual_stack_to_logit_diff(residual_stack, cache: ActivationCache) -> torch.Tensor:
        scaled_residual_stack = cache.apply_ln_to_stack(residual_stack, layer=-1, pos_slice=-1)
        return (scaled_residual_stack * logit_diff_directions).sum(-1).sum(-1) / len(prompts)

    # [41]
    accumulated_residual, labels = cache.accumulated_resid(
        layer=-1, incl_mid=True, pos_slice=-1, return_labels=True
    )
    logit_lens_logit_diffs = residual_stack_to_logit_diff(accumulated_residual, cache)
    x = torch.arange(model.cfg.n_layers * 2 + 1) / 2
    line(logit_lens_logit_diffs, x=x, hover_name=labels)
    assert len(labels) == len(x) and labels[-1] == "final_post"
    torch.testing.assert_close(
        logit_lens_logit_diffs[-1], original_average_logit_diff, rtol=1e-4, atol=1e-4
    )

    # [44] direct logit attribution per layer: sums to the logit difference
    per_layer_residual, labels = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
    per_layer_logit_diffs = residual_stack_to_logit_diff(per_layer_residual, cache)
    line(per_layer_logit_diffs, hover_name=labels)
    torch.testing.assert_close(
        per_layer_logit_diffs.sum(), original_average_logit_diff, rtol=1e-4, atol=1e-4
    )

    # [47] per head: heads + MLPs + embedding sum to the logit difference
    per_head_residual, labels = cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)
    per_head_logit_diffs = residual_stack_to_logit_diff(per_head_residual, cache)
    per_head_logit_diffs = per_head_logit_diffs.reshape(model.cfg.n_layers, model.cfg.n_heads)
    imshow(per_head_logit_diffs, labels={"x": "Head", "y": "Layer"})
    mlp_and_embed = [
        i
        for i, lab in enumerate(cache.decompose_resid(layer=-1, return_labels=True)[1])
        if "attn" not in lab
    ]
    rest = residual_stack_to_logit_diff(per_layer_residual[mlp_and_embed], cache).sum()
    torch.testing.assert_close(
        per_head_logit_diffs.sum() + rest, original_average_logit_diff, rtol=1e-4, atol=1e-4
    )

    # [50] - [52] (circuitsvis replaced; the data it is given is built as in the notebook)
    def visualize_attention_patterns(heads, local_cache, local_tokens, title="", max_width=700):
        if isinstance(heads, int):
            heads = [heads]
        if len(heads) == 0:
            return f"<div style='max-width: {max_width}px;'><h2>{title}</h2><p>No heads</p></div>"
        labels, patterns = [], []
        batch_index = 0
        for head in heads:
            layer = int(head) // model.cfg.n_heads
            head_index = int(head) % model.cfg.n_heads
            labels.append(f"L{layer}H{head_index}")
            patterns.append(local_cache["attn", layer][batch_index, head_index])
        str_tokens = model.to_str_tokens(local_tokens)
        patterns = torch.stack(patterns, dim=0)
        assert patterns.shape == (len(heads), len(str_tokens), len(str_tokens))
        return f"<div style='max-width: {max_width}px;'><h2>{title}</h2>{utils.to_numpy(patterns).shape}</div>"

    top_k = 3
    top_positive_logit_attr_heads = torch.topk(per_head_logit_diffs.flatten(), k=top_k).indices
    positive_html = visualize_attention_patterns(
        top_positive_logit_attr_heads, cache, tokens[0], "Top"
    )
    top_negative_logit_attr_heads = torch.topk(-per_head_logit_diffs.flatten(), k=top_k).indices
    negative_html = visualize_attention_patterns(
        top_negative_logit_attr_heads, cache, tokens[0], "Neg"
    )
    assert positive_html and negative_html

    # [59] / [60]
    corrupted_prompts = []
    for i in range(0, len(prompts), 2):
        corrupted_prompts.append(prompts[i + 1])
        corrupted_prompts.append(prompts[i])
    corrupted_tokens = model.to_tokens(corrupted_prompts, prepend_bos=True)
    corrupted_logits, corrupted_cache = model.run_with_cache(corrupted_tokens, return_type="logits")
    corrupted_average_logit_diff = logits_to_ave_logit_diff(corrupted_logits, answer_tokens)
    print("Corrupted Average Logit Diff", round(corrupted_average_logit_diff.item(), 2))
    print("Clean Average Logit Diff", round(original_average_logit_diff.item(), 2))
    texts = model.to_string(corrupted_tokens)
    assert [t.removeprefix("<|endoftext|>") for t in texts] == corrupted_prompts

    # [62]
    def patch_residual_component(corrupted_residual_component, hook, pos, clean_cache):
        clean_value = clean_cache[hook.name][:, pos, :].clone()
        corrupted_residual_component = corrupted_residual_component.clone()
        corrupted_residual_component[:, pos : pos + 1, :] = clean_value.unsqueeze(1)
        return corrupted_residual_component

    def normalize_patched_logit_diff(patched_logit_diff):
        return (patched_logit_diff - corrupted_average_logit_diff) / (
            original_average_logit_diff - corrupted_average_logit_diff
        )

    patched_residual_stream_diff = torch.zeros(
        model.cfg.n_layers, tokens.shape[1], device=device, dtype=torch.float32
    )
    for layer in range(model.cfg.n_layers):
        for position in range(tokens.shape[1]):
            hook_fn = partial(patch_residual_component, pos=position, clean_cache=cache)
            patched_logits = model.run_with_hooks(
                corrupted_tokens,
                fwd_hooks=[(utils.get_act_name("resid_pre", layer), hook_fn)],
                return_type="logits",
            )
            patched_logit_diff = logits_to_ave_logit_diff(patched_logits, answer_tokens)
            patched_residual_stream_diff[layer, position] = normalize_patched_logit_diff(
                patched_logit_diff
            )
    # clean and corrupted prompts differ only at the inserted name: patching it at layer 0 restores
    # the clean run exactly, every other position changes nothing
    differ = int((tokens != corrupted_tokens).any(0).nonzero().flatten()[0])
    assert (tokens != corrupted_tokens).any(0).sum() == 1
    torch.testing.assert_close(
        patched_residual_stream_diff[0, differ], torch.tensor(1.0), atol=1e-4, rtol=0
    )
    others = [p for p in range(tokens.shape[1]) if p != differ]
    torch.testing.assert_close(
        patched_residual_stream_diff[0, others], torch.zeros(len(others)), atol=1e-5, rtol=0
    )

    # [64]
    prompt_position_labels = [f"{tok}_{i}" for i, tok in enumerate(model.to_str_tokens(tokens[0]))]
    imshow(patched_residual_stream_diff, x=prompt_position_labels)

    # [67] - [71]
    patched_attn_diff = torch.zeros(
        model.cfg.n_layers, tokens.shape[1], device=device, dtype=torch.float32
    )
    patched_mlp_diff = torch.zeros(
        model.cfg.n_layers, tokens.shape[1], device=device, dtype=torch.float32
    )
    for layer in range(model.cfg.n_layers):
        for position in range(tokens.shape[1]):
            hook_fn = partial(patch_residual_component, pos=position, clean_cache=cache)
            patched_attn_logits = model.run_with_hooks(
                corrupted_tokens,
                fwd_hooks=[(utils.get_act_name("attn_out", layer), hook_fn)],
                return_type="logits",
            )
            patched_attn_logit_diff = logits_to_ave_logit_diff(patched_attn_logits, answer_tokens)
            patched_mlp_logits = model.run_with_hooks(
                corrupted_tokens,
                fwd_hooks=[(utils.get_act_name("mlp_out", layer), hook_fn)],
                return_type="logits",
            )
            patched_mlp_logit_diff = logits_to_ave_logit_diff(patched_mlp_logits, answer_tokens)
            patched_attn_diff[layer, position] = normalize_patched_logit_diff(
                patched_attn_logit_diff
            )
            patched_mlp_diff[layer, position] = normalize_patched_logit_diff(patched_mlp_logit_diff)
    imshow(patched_attn_diff, x=prompt_position_labels)
    imshow(patched_mlp_diff, x=prompt_position_labels)
    # before the differing position nothing differs, so patching there changes nothing
    torch.testing.assert_close(
        patched_attn_diff[:, :differ], torch.zeros(model.cfg.n_layers, differ), atol=1e-5, rtol=0
    )

    # [73] - [75]
    def patch_head_vector(corrupted_head_vector, hook, head_index, clean_cache):
        clean_value = clean_cache[hook.name][:, :, head_index, :].clone()
        corrupted_head_vector = corrupted_head_vector.clone()
        corrupted_head_vector[:, :, head_index : head_index + 1, :] = clean_value.unsqueeze(2)
        return corrupted_head_vector

    patched_head_z_diff = torch.zeros(
        model.cfg.n_layers, model.cfg.n_heads, device=device, dtype=torch.float32
    )
    for layer in range(model.cfg.n_layers):
        for head_index in range(model.cfg.n_heads):
            hook_fn = partial(patch_head_vector, head_index=head_index, clean_cache=cache)
            patched_logits = model.run_with_hooks(
                corrupted_tokens,
                fwd_hooks=[(utils.get_act_name("z", layer, "attn"), hook_fn)],
                return_type="logits",
            )
            patched_logit_diff = logits_to_ave_logit_diff(patched_logits, answer_tokens)
            patched_head_z_diff[layer, head_index] = normalize_patched_logit_diff(
                patched_logit_diff
            )
    imshow(patched_head_z_diff)

    # [79] - [83]
    patched_head_v_diff = torch.zeros(
        model.cfg.n_layers, model.cfg.n_heads, device=device, dtype=torch.float32
    )
    for layer in range(model.cfg.n_layers):
        for head_index in range(model.cfg.n_heads):
            hook_fn = partial(patch_head_vector, head_index=head_index, clean_cache=cache)
            patched_logits = model.run_with_hooks(
                corrupted_tokens,
                fwd_hooks=[(utils.get_act_name("v", layer, "attn"), hook_fn)],
                return_type="logits",
            )
            patched_logit_diff = logits_to_ave_logit_diff(patched_logits, answer_tokens)
            patched_head_v_diff[layer, head_index] = normalize_patched_logit_diff(
                patched_logit_diff
            )
    imshow(patched_head_v_diff)
    head_labels = [f"L{l}H{h}" for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]  # noqa: E741
    scatter(
        x=patched_head_v_diff.flatten(), y=patched_head_z_diff.flatten(), hover_name=head_labels
    )

    # [85] - [86]
    def patch_head_pattern(corrupted_head_pattern, hook, head_index, clean_cache):
        clean_value = clean_cache[hook.name][:, head_index, :, :].clone()
        corrupted_head_pattern = corrupted_head_pattern.clone()
        corrupted_head_pattern[:, head_index : head_index + 1, :, :] = clean_value.unsqueeze(1)
        return corrupted_head_pattern

    patched_head_attn_diff = torch.zeros(
        model.cfg.n_layers, model.cfg.n_heads, device=device, dtype=torch.float32
    )
    for layer in range(model.cfg.n_layers):
        for head_index in range(model.cfg.n_heads):
            hook_fn = partial(patch_head_pattern, head_index=head_index, clean_cache=cache)
            patched_logits = model.run_with_hooks(
                corrupted_tokens,
                fwd_hooks=[(utils.get_act_name("attn", layer, "attn"), hook_fn)],
                return_type="logits",
            )
            patched_logit_diff = logits_to_ave_logit_diff(patched_logits, answer_tokens)
            patched_head_attn_diff[layer, head_index] = normalize_patched_logit_diff(
                patched_logit_diff
            )
    imshow(patched_head_attn_diff)
    # layer 0 patterns are computed from the embeddings, identical up to the differing position...
    # ...so every head's effect is finite and the sweep ran on every head
    assert bool(torch.isfinite(patched_head_attn_diff).all())

    # [88] - [91] direct path patching (layers 5 -> 8 become 1 -> 2)
    with pytest.raises(KeyError, match="ln1_post"):
        corrupted_cache[utils.get_act_name("scale", 2, "ln1")]  # post-norm: no attention-input norm

    def patch_direct_path_A_output_to_B_attn_act(
        corrupted_attn_act,
        hook,
        attn_act_type,
        A_layer,
        A_head_index,
        B_layer,
        B_head_index,
        clean_cache,
        corrupted_cache,
    ):
        A_output_act_name = utils.get_act_name("result", A_layer, "attn")
        clean_A_output = clean_cache[A_output_act_name][:, :, A_head_index, :]
        corrupted_A_output = corrupted_cache[A_output_act_name][:, :, A_head_index, :]
        corrupted_B_act = corrupted_attn_act[:, :, B_head_index, :]
        W_B = _get_attention_weights(model.blocks[B_layer].attn, attn_act_type)[B_head_index]
        corrupted_ln1_scale = 1.0  # OLMo-2: attention reads the residual without a norm
        patched_B_act = (
            corrupted_B_act + (clean_A_output - corrupted_A_output) @ W_B / corrupted_ln1_scale
        )
        patched_attn_act = corrupted_attn_act.clone()
        patched_attn_act[:, :, B_head_index, :] = patched_B_act
        return patched_attn_act

    def direct_path_output_to_attn_act_diffs(output_layer, attn_act_layer, attn_act_type):
        A_to_B_diffs = torch.zeros(
            model.cfg.n_heads, model.cfg.n_heads, device=device, dtype=torch.float32
        )
        for A in range(model.cfg.n_heads):
            for B in range(model.cfg.n_heads):
                patch_hook = (
                    utils.get_act_name(attn_act_type, attn_act_layer, "attn"),
                    partial(
                        patch_direct_path_A_output_to_B_attn_act,
                        attn_act_type=attn_act_type,
                        A_layer=output_layer,
                        A_head_index=A,
                        B_layer=attn_act_layer,
                        B_head_index=B,
                        clean_cache=cache,
                        corrupted_cache=corrupted_cache,
                    ),
                )
                patched_logits = model.run_with_hooks(
                    corrupted_tokens, fwd_hooks=[patch_hook], return_type="logits"
                )
                patched_logit_diff = logits_to_ave_logit_diff(patched_logits, answer_tokens)
                A_to_B_diffs[A, B] = normalize_patched_logit_diff(patched_logit_diff)
        return A_to_B_diffs

    def _get_attention_weights(attn, attn_act_type):
        if attn_act_type == "q":
            return attn.W_Q
        if attn_act_type == "k":
            return attn.W_K
        if attn_act_type == "v":
            return attn.W_V
        raise ValueError

    def show_direct_path_output_to_attn_act_diffs(
        diffs, output_layer, attn_act_layer, attn_act_type, zrange=0.3
    ):
        return imshow(diffs, show=False, zmin=-zrange, zmax=zrange)

    output_layer, value_layer = (1, 2)
    diffs = direct_path_output_to_attn_act_diffs(output_layer, value_layer, "v")
    show_direct_path_output_to_attn_act_diffs(diffs, output_layer, value_layer, "v")
    assert diffs.shape == (model.cfg.n_heads, model.cfg.n_heads) and bool(
        torch.isfinite(diffs).all()
    )
    # the head results the patch reads are the exact pieces of the attention output
    torch.testing.assert_close(
        cache["result", 1, "attn"].sum(-2), cache["attn_raw_out", 1], rtol=1e-4, atol=1e-5
    )

    # [93] / [95]: "if not IN_GITHUB" sweeps, skipped as in TL's CI
    assert IN_GITHUB

    # [99] layer groups 7/9 become 1/3
    top_k = 10
    top_heads_by_output_patch = torch.topk(patched_head_z_diff.abs().flatten(), k=top_k).indices
    first_mid_layer = 1
    first_late_layer = 3
    early_heads = top_heads_by_output_patch[
        top_heads_by_output_patch < model.cfg.n_heads * first_mid_layer
    ]
    mid_heads = top_heads_by_output_patch[
        torch.logical_and(
            model.cfg.n_heads * first_mid_layer <= top_heads_by_output_patch,
            top_heads_by_output_patch < model.cfg.n_heads * first_late_layer,
        )
    ]
    late_heads = top_heads_by_output_patch[
        model.cfg.n_heads * first_late_layer <= top_heads_by_output_patch
    ]
    htmls = [
        visualize_attention_patterns(h, cache, tokens[0])
        for h in (early_heads, mid_heads, late_heads)
    ]
    assert len(htmls) == 3

    # [104] / [105]
    example_text = "Research in mechanistic interpretability seeks to explain behaviors of models."
    example_repeated_text = example_text + example_text
    example_repeated_tokens = model.to_tokens(example_repeated_text, prepend_bos=True)
    example_repeated_logits, example_repeated_cache = model.run_with_cache(example_repeated_tokens)
    induction_head_labels = [17, 9]
    code = visualize_attention_patterns(
        induction_head_labels, example_repeated_cache, example_repeated_tokens
    )
    assert code

    # [108]
    seq_len = 100
    batch_size = 2
    prev_token_scores = torch.zeros((model.cfg.n_layers, model.cfg.n_heads), device=device)

    def prev_token_hook(pattern, hook):
        layer = hook.layer()
        diagonal = pattern.diagonal(offset=1, dim1=-1, dim2=-2)
        prev_token_scores[layer] = diagonal.mean(dim=(0, 2))

    duplicate_token_scores = torch.zeros((model.cfg.n_layers, model.cfg.n_heads), device=device)

    def duplicate_token_hook(pattern, hook):
        layer = hook.layer()
        diagonal = pattern.diagonal(offset=seq_len, dim1=-1, dim2=-2)
        duplicate_token_scores[layer] = diagonal.mean(dim=(0, 2))

    induction_scores = torch.zeros((model.cfg.n_layers, model.cfg.n_heads), device=device)

    def induction_hook(pattern, hook):
        layer = hook.layer()
        diagonal = pattern.diagonal(offset=seq_len - 1, dim1=-1, dim2=-2)
        induction_scores[layer] = diagonal.mean(dim=(0, 2))

    torch.manual_seed(0)
    original_tokens = torch.randint(100, 4000, size=(batch_size, seq_len), device="cpu").to(device)
    repeated_tokens = torch.cat([original_tokens, original_tokens], dim=1).to(device)
    pattern_filter = lambda act_name: act_name.endswith("hook_pattern")
    loss = model.run_with_hooks(
        repeated_tokens,
        return_type="loss",
        fwd_hooks=[
            (pattern_filter, prev_token_hook),
            (pattern_filter, duplicate_token_hook),
            (pattern_filter, induction_hook),
        ],
    )
    print(torch.round(utils.get_corner(prev_token_scores).detach().cpu(), decimals=3))
    print(torch.round(utils.get_corner(duplicate_token_scores).detach().cpu(), decimals=3))
    print(torch.round(utils.get_corner(induction_scores).detach().cpu(), decimals=3))
    assert loss.dim() == 0 and utils.get_corner(prev_token_scores).shape == (3, 3)
    _, pattern_cache = model.run_with_cache(repeated_tokens, names_filter=pattern_filter)
    torch.testing.assert_close(
        prev_token_scores[2],
        pattern_cache["pattern", 2].diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, 2)),
    )

    # [110]
    for scores in (prev_token_scores, duplicate_token_scores, induction_scores):
        imshow(scores, labels={"x": "Head", "y": "Layer"})

    # [115]
    top_name_mover = per_head_logit_diffs.flatten().argmax().item()
    top_name_mover_layer = top_name_mover // model.cfg.n_heads
    top_name_mover_head = top_name_mover % model.cfg.n_heads
    print(f"Top Name Mover to ablate: L{top_name_mover_layer}H{top_name_mover_head}")

    def ablate_top_head_hook(z, hook):
        z = z.clone()
        z[:, -1, top_name_mover_head, :] = 0
        return z

    model.blocks[top_name_mover_layer].attn.hook_z.add_hook(ablate_top_head_hook)
    ablated_logits, ablated_cache = model.run_with_cache(tokens)
    ablated_diff = logits_to_ave_logit_diff(ablated_logits, answer_tokens)
    print(f"Original logit diff: {original_average_logit_diff:.2f}")
    print(f"Post ablation logit diff: {ablated_diff.item():.2f}")
    print(
        f"Direct Logit Attribution of top name mover head: {per_head_logit_diffs.flatten()[top_name_mover].item():.2f}"
    )
    assert not ablated_cache["z", top_name_mover_layer][:, -1, top_name_mover_head].any()
    assert ablated_diff.item() != original_average_logit_diff.item()

    # [117]
    per_head_ablated_residual, labels = ablated_cache.stack_head_results(
        layer=-1, pos_slice=-1, return_labels=True
    )
    per_head_ablated_logit_diffs = residual_stack_to_logit_diff(
        per_head_ablated_residual, ablated_cache
    )
    per_head_ablated_logit_diffs = per_head_ablated_logit_diffs.reshape(
        model.cfg.n_layers, model.cfg.n_heads
    )
    imshow(per_head_ablated_logit_diffs)
    scatter(
        y=per_head_logit_diffs.flatten(),
        x=per_head_ablated_logit_diffs.flatten(),
        hover_name=head_labels,
    )
    assert per_head_ablated_logit_diffs[top_name_mover_layer, top_name_mover_head].abs() < 1e-5

    # [119]
    ratio = (
        cache["ln_final.hook_scale"][:, -1] / ablated_cache["ln_final.hook_scale"][:, -1]
    ).mean()
    print("Average LN scaling ratio:", round(ratio.item(), 3))
    print(
        "Ablation LN scale",
        ablated_cache["ln_final.hook_scale"][:, -1].detach().cpu().round(decimals=2),
    )
    print("Original LN scale", cache["ln_final.hook_scale"][:, -1].detach().cpu().round(decimals=2))
    assert ratio.item() > 0
    model.reset_hooks()
    assert not model.blocks[top_name_mover_layer].attn.hook_z.has_hooks
