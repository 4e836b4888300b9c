"""The data forms a JoLA user brings (datasets.Dataset / dicts / JSONL with text, messages or
prompt/completion), answer-only loss masking, and seed 000's Basic Usage snippet as written."""

import json

import datasets
import pytest
import torch
from transformers import TrainingArguments

from olmokit.data.formatting import IGNORE_INDEX, encode_record
from olmokit.data.readers import Record
from olmokit.errors import DataError
from olmokit.jola import (
    JoLASettings,
    JoLATrainer,
    attach_jola,
    encode_for_training,
    jola_state_dict,
    to_records,
)
from olmokit.zoo.presets import random_model

CHAT = {
    "messages": [
        {"role": "user", "content": "Which module parses JSON?"},
        {"role": "assistant", "content": "json"},
    ]
}
PC = {"prompt": "The module for regular expressions is ", "completion": "re"}
TEXT = {"text": "import json\njson.loads('[]')"}


def _targets(ex, tok):
    return tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE_INDEX])


def test_answer_loss_masks_the_template_but_keeps_the_ids(zoo_tokenizer):
    tok = zoo_tokenizer
    rec = to_records([CHAT])[0]
    turn = encode_record(rec, tok)
    answer = encode_for_training(rec, tok, loss_on="answer")
    # same token ids (training and scoring see the same inputs), only the label mask differs
    assert answer.input_ids == turn.input_ids
    assert _targets(turn, tok) == "json\n<|im_end|>\n"
    assert _targets(answer, tok) == "json\n"  # the answer and its line break, not <|im_end|>
    assert encode_for_training(rec, tok, loss_on="turn").labels == turn.labels
    pc = encode_for_training(to_records([PC])[0], tok, loss_on="answer")
    assert _targets(pc, tok) == "re"  # EOS is not a target
    text = encode_for_training(to_records([TEXT])[0], tok, loss_on="answer")
    assert all(lab != IGNORE_INDEX for lab in text.labels)  # plain text: every token
    with pytest.raises(DataError, match="loss_on"):
        encode_for_training(rec, tok, loss_on="everything")


def test_every_form_gives_the_same_examples(tmp_path, zoo_tokenizer):
    rows = [CHAT, PC, TEXT]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    from_list = to_records(rows)
    assert [r.kind for r in from_list] == ["chat", "prompt_completion", "text"]
    assert [r.data for r in to_records(path)] == [r.data for r in from_list]
    # one Dataset per shape (a Dataset has one schema); absent columns are not read as None
    for row, rec in zip(rows, from_list):
        ds = datasets.Dataset.from_list([row])
        assert to_records(ds)[0].data == rec.data
    # the reference trainer's dataset_text_field names another text column
    ds = datasets.Dataset.from_dict({"content": ["a b c"]})
    assert to_records(ds, text_field="content")[0].data == {"text": "a b c"}
    with pytest.raises(DataError, match=r"dataset\[0\]"):
        to_records([{"question": "no known columns"}])
    with pytest.raises(DataError, match="expected a dict"):
        to_records(["just a string"])


@pytest.mark.parametrize("column", ["text", "messages", "prompt_completion"])
def test_trainer_accepts_a_datasets_dataset(tmp_path, zoo_tokenizer, column):
    # a Dataset with a text column used to fail inside Trainer ("No columns in the dataset match")
    rows = {"text": [TEXT] * 8, "messages": [CHAT] * 8, "prompt_completion": [PC] * 8}[column]
    ds = datasets.Dataset.from_list(rows)
    model = random_model("olmo2", "tiny", seed=0)
    attach_jola(model, JoLASettings())
    before = {k: v.clone() for k, v in jola_state_dict(model).items()}
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[],
        save_strategy="no", use_cpu=True, disable_tqdm=True, learning_rate=1e-2,
    )  # fmt: skip
    tr = JoLATrainer(model=model, args=args, train_dataset=ds, tokenizer=zoo_tokenizer)
    assert tr.train().global_step == 2
    after = jola_state_dict(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_seed_basic_usage_runs_as_written(tmp_path, monkeypatch):
    """Seed 000's *Basic Usage*, with only the model name, device and a small dataset filled in."""
    from transformers import AutoTokenizer

    from olmokit.jola import JoLAConfig, JoLAOlmo2Model
    from olmokit.zoo.registry import DEFAULT_MODEL, shipped_path

    cfg_path = tmp_path / "config_olmo2.yaml"
    cfg_path.write_text(
        open("configs/jola/config_olmo2.yaml", encoding="utf-8")
        .read()
        .replace("sp-embraceable/OLMo-2-1124-13B-Instruct-32k-Context-ChatML", DEFAULT_MODEL)
        .replace('device: "cuda"', 'device: "cpu"'),
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    dataset = datasets.Dataset.from_list([CHAT, CHAT, CHAT, CHAT])

    # ---- the seed's snippet (imports from olmokit.jola instead of jola) ----
    config = JoLAConfig.get_jola_config(default=False, config_path=str(cfg_path))
    tokenizer = AutoTokenizer.from_pretrained(shipped_path(DEFAULT_MODEL))
    model = JoLAOlmo2Model.jola_from_pretrained(**config["model_config"])
    model.unfreeze_jola_params()
    trainer = JoLATrainer(
        model=model,
        train_dataset=dataset,
        tokenizer=tokenizer,
        args=TrainingArguments(
            output_dir=str(tmp_path / "out"), max_steps=1, report_to=[], use_cpu=True
        ),
        gate_scheduler="expon",  # or "linear", "cyclic", "perform"
    )
    trainer.train()
    # ------------------------------------------------------------------------
    assert trainer.state.global_step == 1 and trainer.gate_scheduler.name == "expon"


def test_records_pass_through(zoo_tokenizer):
    rec = Record("chat", CHAT, "mem:0")
    assert to_records([rec]) == [rec]


def test_validation_is_carved_from_training_rows_never_the_test_file(tmp_path):
    from olmokit.jola import load_run_data
    from olmokit.jola.config import DataSection

    def write(name, n, tag):
        rows = [{"prompt": f"{tag} {i}:", "completion": f"{i}"} for i in range(n)]
        (tmp_path / name).write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
        return str(tmp_path / name)

    train_file, eval_file = write("train.jsonl", 30, "train"), write("test.jsonl", 10, "test")
    d = load_run_data(
        DataSection(train_file=train_file, eval_file=eval_file, train_size=20, valid_size=6)
    )
    assert len(d.train) == 20 and len(d.valid) == 6 and len(d.test) == 10
    assert all(r.data["prompt"].startswith("train") for r in d.valid)  # never the test file
    assert not {id(r) for r in d.train} & {id(r) for r in d.valid}
    assert all(ex.prompt.startswith("test") for ex in d.test)
    # without eval_file: train, then validation, then test, all disjoint rows of train_file
    d2 = load_run_data(DataSection(train_file=train_file, train_size=20, valid_size=6, eval_size=4))
    prompts = [r.data["prompt"] for r in d2.train + d2.valid] + [ex.prompt for ex in d2.test]
    assert len(prompts) == len(set(prompts)) == 30
    # built-in task: validation = training-split examples after the training ones
    d3 = load_run_data(DataSection(task="stdlib_module", train_size=8, valid_size=4, eval_size=5))
    assert len(d3.valid) == len(d3.valid_examples) == 4 and len(d3.test) == 5
