# ruff: noqa: E731  (the notebook names its hook filters with lambdas)
"""TransformerLens's *Main Demo* notebook, ported to OLMo and run as a test.

Written for olmokit from the notebook's cells (``demos/Main_Demo.ipynb``, TransformerLens dev snapshot
4cd36aae), in order, with only these changes:

* the loading line: ``HookedTransformer.from_pretrained("olmo2-stdlib")`` (the zoo model, trained on
  Python's standard library) instead of GPT-2 (and ``olmo-stdlib-tiny``, an OLMo v1, for distilgpt2);
* prompts that fit the zoo vocabulary: the IOI names " John"/" Mary" become " self"/" cls" (single
  tokens here), " cat" becomes " key", token ids are drawn from [100, 4000) (vocab 4096);
* GPT-2 constants: head 8 → head 7 (8 heads), induction layer 5 → 1 (4 layers);
* plotting (plotly, circuitsvis, ``display``) is replaced by a no-op that still converts its input
  with ``utils.to_numpy``; ``print`` output is kept.

Not ported: the cells that load TransformerLens's own non-OLMo checkpoints (SoLU, stanford-gpt2) and
``transformer_lens.evals`` (they need those models from the hub). Where a cell computes a number with a
known right answer, the test asserts it.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn as nn

import olmokit.lens.utils as utils
from olmokit.lens import FactoredMatrix, HookedTransformer, HookPoint
from olmokit.lens.root import HookedRootModule

pytestmark = pytest.mark.usefixtures("needs_zoo_models")


@pytest.fixture(scope="module")
def needs_zoo_models():
    from olmokit.zoo.registry import ZOO

    if not (ZOO["olmo2-stdlib"].available and ZOO["olmo-stdlib-tiny"].available):
        pytest.skip("zoo models not built")


def _plot(tensor, *args, **kwargs):
    """Stand-in for the notebook's imshow/line/scatter: checks the input converts, draws nothing."""
    return utils.to_numpy(tensor)


imshow = line = _plot


def repeat_twice(t: torch.Tensor) -> torch.Tensor:
    """``einops.repeat(t, "batch seq_len -> batch (2 seq_len)")`` without the einops dependency."""
    return torch.cat([t, t], dim=1)


@torch.no_grad()
def test_main_demo_runs_on_olmo():
    torch.set_grad_enabled(False)
    try:
        _main_demo()
    finally:
        torch.set_grad_enabled(True)


def _main_demo():  # noqa: PLR0915 - one notebook, cell by cell
    # [16]
    device = utils.get_device()
    # [17] loading line changed
    model = HookedTransformer.from_pretrained("olmo2-stdlib", device="cpu")
    assert device.type in ("cpu", "cuda", "mps")

    # [19]
    model_description_text = """## Loading and Running Models

def load(name):
    return open(name).read()
"""
    loss = model(model_description_text, return_type="loss")
    print("Model loss:", loss)
    assert loss.dim() == 0 and 0 < float(loss) < 12

    # [22]
    gpt2_text = "import os\nimport sys\n\ndef main(argv):\n    for name in argv:\n        print(os.path.join(name))\n"
    gpt2_tokens = model.to_tokens(gpt2_text)
    print(gpt2_tokens.device)
    gpt2_logits, gpt2_cache = model.run_with_cache(gpt2_tokens, remove_batch_dim=True)
    assert int(gpt2_tokens[0, 0]) == model.tokenizer.eos_token_id  # BOS (EOS stands in)

    # [24]
    print(type(gpt2_cache))
    attention_pattern = gpt2_cache["pattern", 0, "attn"]
    print(attention_pattern.shape)
    gpt2_str_tokens = model.to_str_tokens(gpt2_text)
    n_tok = gpt2_tokens.shape[1]
    assert attention_pattern.shape == (model.cfg.n_heads, n_tok, n_tok)
    assert len(gpt2_str_tokens) == n_tok

    # [27]
    attn_hook_name = "blocks.0.attn.hook_pattern"
    attn_layer = 0
    _, gpt2_attn_cache = model.run_with_cache(
        gpt2_tokens,
        remove_batch_dim=True,
        stop_at_layer=attn_layer + 1,
        names_filter=[attn_hook_name],
    )
    gpt2_attn = gpt2_attn_cache[attn_hook_name]
    assert torch.allclose(gpt2_attn, attention_pattern)

    # [31] head index changed (8 heads)
    layer_to_ablate = 0
    head_index_to_ablate = 7

    def head_ablation_hook(value, hook: HookPoint):
        print(f"Shape of the value tensor: {value.shape}")
        value[:, :, head_index_to_ablate, :] = 0.0
        return value

    original_loss = model(gpt2_tokens, return_type="loss")
    ablated_loss = model.run_with_hooks(
        gpt2_tokens,
        return_type="loss",
        fwd_hooks=[(utils.get_act_name("v", layer_to_ablate), head_ablation_hook)],
    )
    print(f"Original Loss: {original_loss.item():.3f}")
    print(f"Ablated Loss: {ablated_loss.item():.3f}")
    assert ablated_loss.item() != original_loss.item()
    assert torch.equal(model(gpt2_tokens, return_type="loss"), original_loss)  # hook removed

    # [35] names changed to single tokens of the zoo vocabulary
    clean_prompt = "After self and cls went to the store, cls gave a bottle of milk to"
    corrupted_prompt = "After self and cls went to the store, self gave a bottle of milk to"
    clean_tokens = model.to_tokens(clean_prompt)
    corrupted_tokens = model.to_tokens(corrupted_prompt)

    def logits_to_logit_diff(logits, correct_answer=" self", incorrect_answer=" cls"):
        correct_index = model.to_single_token(correct_answer)
        incorrect_index = model.to_single_token(incorrect_answer)
        return logits[0, -1, correct_index] - logits[0, -1, incorrect_index]

    clean_logits, clean_cache = model.run_with_cache(clean_tokens)
    clean_logit_diff = logits_to_logit_diff(clean_logits)
    print(f"Clean logit difference: {clean_logit_diff.item():.3f}")
    corrupted_logits = model(corrupted_tokens)
    corrupted_logit_diff = logits_to_logit_diff(corrupted_logits)
    print(f"Corrupted logit difference: {corrupted_logit_diff.item():.3f}")

    # [37]
    def residual_stream_patching_hook(resid_pre, hook: HookPoint, position: int):
        clean_resid_pre = clean_cache[hook.name]
        resid_pre[:, position, :] = clean_resid_pre[:, position, :]
        return resid_pre

    num_positions = len(clean_tokens[0])
    ioi_patching_result = torch.zeros((model.cfg.n_layers, num_positions), device=model.cfg.device)
    for layer in range(model.cfg.n_layers):
        for position in range(num_positions):
            temp_hook_fn = partial(residual_stream_patching_hook, position=position)
            patched_logits = model.run_with_hooks(
                corrupted_tokens, fwd_hooks=[(utils.get_act_name("in", layer), temp_hook_fn)]
            )
            patched_logit_diff = logits_to_logit_diff(patched_logits).detach()
            ioi_patching_result[layer, position] = (patched_logit_diff - corrupted_logit_diff) / (
                clean_logit_diff - corrupted_logit_diff
            )
    # the prompts differ at one position; at layer 0 patching it there makes the corrupted run clean
    differ = int((clean_tokens != corrupted_tokens).nonzero()[0, 1])
    torch.testing.assert_close(ioi_patching_result[0, differ], torch.tensor(1.0), atol=1e-4, rtol=0)
    same = [p for p in range(num_positions) if p != differ]
    torch.testing.assert_close(
        ioi_patching_result[0, same], torch.zeros(len(same)), atol=1e-5, rtol=0
    )

    # [39]
    token_labels = [
        f"{token}_{index}" for index, token in enumerate(model.to_str_tokens(clean_tokens))
    ]
    imshow(ioi_patching_result, x=token_labels, xaxis="Position", yaxis="Layer")

    # [44] token range fits the vocabulary
    batch_size = 10
    seq_len = 50
    size = (batch_size, seq_len)
    input_tensor = torch.randint(100, 4000, size, generator=torch.Generator().manual_seed(0))
    random_tokens = input_tensor.to(model.cfg.device)
    repeated_tokens = repeat_twice(random_tokens)
    repeated_logits = model(repeated_tokens)
    correct_log_probs = model.loss_fn(repeated_logits, repeated_tokens, per_token=True)
    loss_by_position = correct_log_probs.mean(0)
    line(loss_by_position, xaxis="Position", yaxis="Loss")
    assert correct_log_probs.shape == (batch_size, 2 * seq_len - 1)
    reference = torch.nn.functional.cross_entropy(
        repeated_logits[:, :-1].flatten(0, 1), repeated_tokens[:, 1:].flatten(), reduction="none"
    ).view(batch_size, -1)
    torch.testing.assert_close(correct_log_probs, reference, rtol=1e-5, atol=1e-5)

    # [46]
    induction_score_store = torch.zeros(
        (model.cfg.n_layers, model.cfg.n_heads), device=model.cfg.device
    )

    def induction_score_hook(pattern, hook: HookPoint):
        induction_stripe = pattern.diagonal(dim1=-2, dim2=-1, offset=1 - seq_len)
        induction_score = induction_stripe.mean(dim=(0, 2))
        induction_score_store[hook.layer(), :] = induction_score

    pattern_hook_names_filter = lambda name: name.endswith("pattern")
    model.run_with_hooks(
        repeated_tokens,
        return_type=None,
        fwd_hooks=[(pattern_hook_names_filter, induction_score_hook)],
    )
    imshow(induction_score_store, xaxis="Head", yaxis="Layer")
    _, pattern_cache = model.run_with_cache(repeated_tokens, names_filter=pattern_hook_names_filter)
    for layer in range(model.cfg.n_layers):
        stripe = pattern_cache["pattern", layer].diagonal(dim1=-2, dim2=-1, offset=1 - seq_len)
        torch.testing.assert_close(induction_score_store[layer], stripe.mean(dim=(0, 2)))
    assert bool((induction_score_store > 0).all())

    # [48] layer constant changed
    induction_head_layer = 1
    induction_head_index = int(induction_score_store[induction_head_layer].argmax())
    size = (1, 20)
    input_tensor = torch.randint(100, 4000, size, generator=torch.Generator().manual_seed(50))
    single_random_sequence = input_tensor.to(model.cfg.device)
    repeated_random_sequence = repeat_twice(single_random_sequence)
    shown = []

    def visualize_pattern_hook(pattern, hook: HookPoint):
        shown.append(
            _plot(
                pattern[0, induction_head_index, :, :],
                model.to_str_tokens(repeated_random_sequence),
            )
        )

    model.run_with_hooks(
        repeated_random_sequence,
        return_type=None,
        fwd_hooks=[(utils.get_act_name("pattern", induction_head_layer), visualize_pattern_hook)],
    )
    assert len(shown) == 1 and shown[0].shape == (40, 40)

    # [51] a second model: an OLMo v1 (GQA) in place of distilgpt2
    distilgpt2 = HookedTransformer.from_pretrained("olmo-stdlib-tiny", device="cpu")

    # [52]
    distilgpt2_induction_score_store = torch.zeros(
        (distilgpt2.cfg.n_layers, distilgpt2.cfg.n_heads), device=distilgpt2.cfg.device
    )

    def induction_score_hook_2(pattern, hook: HookPoint):
        induction_stripe = pattern.diagonal(dim1=-2, dim2=-1, offset=1 - seq_len)
        distilgpt2_induction_score_store[hook.layer(), :] = induction_stripe.mean(dim=(0, 2))

    distilgpt2.run_with_hooks(
        repeated_tokens,
        return_type=None,
        fwd_hooks=[(pattern_hook_names_filter, induction_score_hook_2)],
    )
    imshow(distilgpt2_induction_score_store, xaxis="Head", yaxis="Layer")
    assert bool((distilgpt2_induction_score_store > 0).all())

    # [59] / [61]
    block0 = [(n, p.shape) for n, p in model.tl_named_parameters() if n.startswith("blocks.0.")]
    for name, shape in block0:
        print(name, shape)
    for name, param in model.tl_named_parameters():
        if not name.startswith("blocks"):
            print(name, param.shape)
    shapes = dict(block0)
    cfg = model.cfg
    assert shapes["blocks.0.attn.W_Q"] == (cfg.n_heads, cfg.d_model, cfg.d_head)
    assert shapes["blocks.0.attn.W_O"] == (cfg.n_heads, cfg.d_head, cfg.d_model)
    assert shapes["blocks.0.mlp.W_in"] == (cfg.d_model, cfg.d_mlp)
    assert shapes["blocks.0.mlp.W_out"] == (cfg.d_mlp, cfg.d_model)

    # [63]
    test_prompt = "The quick brown fox jumped over the lazy dog"
    print("Num tokens:", len(model.to_tokens(test_prompt)[0]))
    seen = []

    def print_name_shape_hook_function(activation, hook):
        print(hook.name, activation.shape)
        seen.append(hook.name)

    not_in_late_block_filter = lambda name: (
        name.startswith("blocks.0.") or not name.startswith("blocks")
    )
    model.run_with_hooks(
        test_prompt,
        return_type=None,
        fwd_hooks=[(not_in_late_block_filter, print_name_shape_hook_function)],
    )
    assert seen[0] == "hook_embed" and "blocks.0.hook_resid_post" in seen
    assert not any(n.startswith("blocks.1.") for n in seen)

    # [67] / [68] OLMo has no unembedding bias: zeros, as TL's OLMo conversion
    unembed_bias = model.unembed.b_U
    bias_values, bias_indices = unembed_bias.sort(descending=True)
    top_k = 20
    for i in range(top_k):
        print(f"{bias_values[i].item():.2f} {repr(model.to_string(bias_indices[i]))}")
    assert not unembed_bias.any()

    # [70]
    john_bias = model.unembed.b_U[model.to_single_token(" self")]
    mary_bias = model.unembed.b_U[model.to_single_token(" cls")]
    print(f"Prob ratio bias: {torch.exp(john_bias - mary_bias).item():.4f}x")

    # [74] / [77]
    example_text = "The first thing you need to figure out is *how* things are tokenized."
    example_text_str_tokens = model.to_str_tokens(example_text)
    print(example_text_str_tokens)
    example_text_tokens = model.to_tokens(example_text)
    print(example_text_tokens)
    assert "".join(example_text_str_tokens[1:]) == example_text

    # [79] different lengths: padded
    example_multi_text = ["The cat sat on the mat.", "The cat sat on the mat really hard."]
    example_multi_text_tokens = model.to_tokens(example_multi_text)
    print(example_multi_text_tokens)
    short = model.to_tokens(example_multi_text[0])
    assert example_multi_text_tokens.shape[0] == 2
    assert torch.equal(example_multi_text_tokens[0, : short.shape[1]], short[0])
    assert bool(
        (example_multi_text_tokens[0, short.shape[1] :] == model.tokenizer.pad_token_id).all()
    )

    # [81]
    cat_text = "The cat sat on the mat."
    cat_logits = model(cat_text)
    cat_probs = cat_logits.softmax(dim=-1)
    print(f"Probability tensor shape [batch, position, d_vocab] == {cat_probs.shape}")
    capital_the_token_index = model.to_single_token(" The")
    print(f"| The| probability: {cat_probs[0, -1, capital_the_token_index].item():.2%}")

    # [83]
    print(f"Token 256: |{model.to_string(256)}|")
    print(f"De-Tokenizing the example tokens: {model.to_string(example_text_tokens.squeeze())}")
    assert model.to_string(example_text_tokens.squeeze()[1:]) == example_text

    # [85] / [87] " cat" is two tokens here: " key"
    with_bos = model.get_token_position(" key", "The key sat on the mat")
    without_bos = model.get_token_position(" key", "The key sat on the mat", prepend_bos=False)
    print("With BOS:", with_bos, "Without BOS:", without_bos)
    assert (with_bos, without_bos) == (2, 1)
    first = model.get_token_position(
        " key", "The key sat on the mat. The mat sat on the key.", mode="first"
    )
    last = model.get_token_position(
        " key", "The key sat on the mat. The mat sat on the key.", mode="last"
    )
    assert first == 2 and last > first

    # [89]
    print(model.to_str_tokens("2342+2017=21445"))
    print(model.to_str_tokens("1000+1000000=999999"))

    # [93]
    default = model("Hello World").shape
    print("Logits shape by default (with BOS)", default)
    print("Logits shape with BOS", model("Hello World", prepend_bos=True).shape)
    no_bos = model("Hello World", prepend_bos=False).shape
    print("Logits shape without BOS", no_bos)
    assert default[1] == no_bos[1] + 1

    # [95]
    ioi = "cls and self went to the shops, then self gave a bottle of milk to"
    with_bos_logits = model(ioi, prepend_bos=True)
    without_bos_logits = model(ioi, prepend_bos=False)
    diff_with = (with_bos_logits[0, -1, 1702] - with_bos_logits[0, -1, 310]).item()
    diff_without = (without_bos_logits[0, -1, 1702] - without_bos_logits[0, -1, 310]).item()
    print(f"Logit difference with BOS: {diff_with:.3f}, without: {diff_without:.3f}")
    assert diff_with != diff_without

    # [97]
    print(f"| key| -> {model.to_str_tokens(' key', prepend_bos=False)}")
    print(f"|key| -> {model.to_str_tokens('key', prepend_bos=False)}")
    assert model.to_str_tokens(" key", prepend_bos=False) == [" key"]

    # [101] - [107] FactoredMatrix
    torch.manual_seed(50)
    A = torch.randn(5, 2)
    B = torch.randn(2, 5)
    AB = A @ B
    AB_factor = FactoredMatrix(A, B)
    print("Norms:", AB.norm(), AB_factor.norm())
    print(
        f"Right dimension: {AB_factor.rdim}, Left dimension: {AB_factor.ldim}, Hidden dimension: {AB_factor.mdim}"
    )
    torch.testing.assert_close(AB_factor.norm(), AB.norm())
    assert (AB_factor.ldim, AB_factor.rdim, AB_factor.mdim) == (5, 5, 2)
    full_eig = torch.linalg.eig(AB).eigenvalues
    print("Eigenvalues:", full_eig, AB_factor.eigenvalues)
    print("Singular Values:", torch.linalg.svd(AB).S, AB_factor.S)
    torch.testing.assert_close(AB_factor.S, torch.linalg.svd(AB).S[:2])
    nonzero = full_eig[full_eig.abs() > 1e-4]
    torch.testing.assert_close(
        sorted(nonzero.real.tolist()),
        sorted(AB_factor.eigenvalues.real.tolist()),
        atol=1e-4,
        rtol=1e-4,
    )
    C = torch.randn(5, 300)
    ABC = AB @ C
    ABC_factor = AB_factor @ C
    print("Unfactored:", ABC.shape, ABC.norm().round(decimals=3))
    print("Factored:", ABC_factor.shape, ABC_factor.norm().round(decimals=3))
    assert ABC_factor.shape == (5, 300) and ABC_factor.mdim == 2
    torch.testing.assert_close(ABC_factor.norm(), ABC.norm(), rtol=1e-4, atol=1e-4)
    AB_unfactored = AB_factor.AB
    assert torch.isclose(AB_unfactored, AB).all()

    # [110] - [112]
    OV_circuit_all_heads = model.OV
    print(OV_circuit_all_heads)
    OV_circuit_all_heads_eigenvalues = OV_circuit_all_heads.eigenvalues
    print(OV_circuit_all_heads_eigenvalues.shape, OV_circuit_all_heads_eigenvalues.dtype)
    assert OV_circuit_all_heads_eigenvalues.shape == (cfg.n_layers, cfg.n_heads, cfg.d_head)
    OV_copying_score = OV_circuit_all_heads_eigenvalues.sum(
        dim=-1
    ).real / OV_circuit_all_heads_eigenvalues.abs().sum(dim=-1)
    imshow(utils.to_numpy(OV_copying_score), xaxis="Head", yaxis="Layer")
    # the factored eigenvalues are those of the full d_model x d_model OV matrix of a head
    head_ov = model.blocks[1].attn.W_V[3] @ model.blocks[1].attn.W_O[3]
    full = torch.linalg.eig(head_ov).eigenvalues
    full = full[full.abs().argsort(descending=True)][: cfg.d_head]
    ours = OV_circuit_all_heads_eigenvalues[1, 3]
    torch.testing.assert_close(
        ours.abs().sort().values, full.abs().sort().values, rtol=1e-3, atol=1e-4
    )

    # [114] - [120]
    full_OV_circuit = model.embed.W_E @ OV_circuit_all_heads @ model.unembed.W_U
    print(full_OV_circuit)
    full_OV_circuit_eigenvalues = full_OV_circuit.eigenvalues
    print(full_OV_circuit_eigenvalues.shape, full_OV_circuit_eigenvalues.dtype)
    assert full_OV_circuit.shape == (cfg.n_layers, cfg.n_heads, cfg.d_vocab, cfg.d_vocab)
    full_OV_copying_score = full_OV_circuit_eigenvalues.sum(
        dim=-1
    ).real / full_OV_circuit_eigenvalues.abs().sum(dim=-1)
    imshow(utils.to_numpy(full_OV_copying_score), xaxis="Head", yaxis="Layer")
    assert bool((full_OV_copying_score.abs() <= 1 + 1e-5).all())

    # [123]
    prompt = "def main():\n"
    text = model.generate(prompt, max_new_tokens=50, temperature=0.7, verbose=False)
    assert isinstance(text, str) and text.startswith(prompt) and len(text) > len(prompt)

    # [128] - [132] hooks on your own module
    class SquareThenAdd(nn.Module):
        def __init__(self, offset):
            super().__init__()
            self.offset = nn.Parameter(torch.tensor(offset))
            self.hook_square = HookPoint()

        def forward(self, x):
            square = self.hook_square(x * x)
            return self.offset + square

    class TwoLayerModel(HookedRootModule):
        def __init__(self):
            super().__init__()
            self.layer1 = SquareThenAdd(3.0)
            self.layer2 = SquareThenAdd(-4.0)
            self.hook_in = HookPoint()
            self.hook_mid = HookPoint()
            self.hook_out = HookPoint()
            super().setup()

        def forward(self, x):
            x_in = self.hook_in(x)
            x_mid = self.hook_mid(self.layer1(x_in))
            x_out = self.hook_out(self.layer2(x_mid))
            return x_out

    toy = TwoLayerModel()
    out, cache = toy.run_with_cache(torch.tensor(5.0))
    print("Model output:", out.item())
    for key in cache:
        print(f"Value cached at hook {key}", cache[key].item())
    assert out.item() == 780.0 and cache["layer2.hook_square"].item() == 784.0

    def set_to_zero_hook(tensor, hook):
        print(hook.name)
        return torch.tensor(0.0)

    patched = toy.run_with_hooks(
        torch.tensor(5.0), fwd_hooks=[("layer2.hook_square", set_to_zero_hook)]
    )
    print("Output after intervening on layer2.hook_square", patched.item())
    assert patched.item() == -4.0
