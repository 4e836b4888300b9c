"""Training the zoo's byte-level BPE tokenizer with ``tokenizers`` and wrapping it for ``transformers``."""

from __future__ import annotations

from collections.abc import Iterable

from ...data.formatting import CHATML_TEMPLATE
from ..presets import EOS_ID, PAD_ID, SPECIAL_TOKENS, ZOO_VOCAB_SIZE

__all__ = ["CHATML_TEMPLATE", "train_tokenizer"]


def train_tokenizer(texts: Iterable[str], vocab_size: int = ZOO_VOCAB_SIZE):
    """Train a byte-level BPE (special tokens get ids 0..3) and return a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    assert (
        tok.token_to_id(SPECIAL_TOKENS[EOS_ID]) == EOS_ID
        and tok.token_to_id(SPECIAL_TOKENS[PAD_ID]) == PAD_ID
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=SPECIAL_TOKENS[EOS_ID],
        pad_token=SPECIAL_TOKENS[PAD_ID],
        additional_special_tokens=SPECIAL_TOKENS[2:],
        chat_template=CHATML_TEMPLATE,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
