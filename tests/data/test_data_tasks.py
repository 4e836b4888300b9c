"""The built-in stdlib_module task: size, determinism, split hygiene."""

import pytest

from olmokit.data.tasks import get_task, mc_examples_from_records, stdlib_module_task
from olmokit.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def task():
    return stdlib_module_task()


def test_sizes_and_choices(task):
    # train is capped at n_train=400; the held-out pool depends on the CPython (232 on 3.11)
    assert len(task.train) == 400 and 200 <= len(task.heldout) <= 300
    for ex in task.train[:50] + task.heldout[:50]:
        assert len(ex.choices) == 4 and len(set(ex.choices)) == 4
        assert ex.answer_text in ex.prompt and all(c in ex.prompt for c in ex.choices)
    # answers are spread over positions (no position bias)
    positions = {ex.answer for ex in task.heldout}
    assert positions == {0, 1, 2, 3}


def test_deterministic_and_disjoint(task):
    again = stdlib_module_task()
    assert again.train == task.train and again.heldout == task.heldout
    train_docs = {ex.prompt.split("\n\n")[1] for ex in task.train}
    held_docs = {ex.prompt.split("\n\n")[1] for ex in task.heldout}
    assert not train_docs & held_docs
    # held-out examples come from held-out files of the zoo corpus split
    from olmokit.data.stdlib import is_held_out

    for ex in task.heldout[:30]:
        rel = ex.source.removeprefix("stdlib:").rsplit(":", 1)[0]
        assert is_held_out(f"file:{rel}")


def test_record_formats(task):
    ex = task.heldout[0]
    rec = ex.record(1)
    assert rec.kind == "chat" and rec.messages[-1] == {
        "role": "assistant",
        "content": ex.choices[1],
    }
    assert get_task("stdlib_module").heldout[:3] == task.heldout[:3]
    with pytest.raises(ConfigError, match="stdlib_module"):
        get_task("nope")


def test_mc_from_records():
    from olmokit.data.readers import Record

    r = Record(
        "prompt_completion", {"prompt": "2+2=", "completion": "4", "choices": ["3", "4"]}, "f:1"
    )
    (ex,) = mc_examples_from_records([r])
    assert ex.answer == 1 and ex.record().data["completion"] == "4"
    bad = Record(
        "prompt_completion", {"prompt": "2+2=", "completion": "5", "choices": ["3", "4"]}, "f:2"
    )
    with pytest.raises(DataError, match="f:2"):
        mc_examples_from_records([bad])


def test_heldout_distractors_are_drawn_from_the_answers_by_default(task):
    """Only the large packages have held-out files, so every held-out answer is one of ~12 names.
    By default the distractors come from those names too; ``heldout_distractors='all'`` (the task as
    first shipped) draws them from all ~61 labels, which rewards a preference for the large packages
    that validation does not see. Training, and the held-out questions and answers, are the same."""
    held_answers = {ex.answer_text for ex in task.heldout}
    assert len(held_answers) < 20
    for ex in task.heldout:
        assert set(ex.choices) <= held_answers and len(set(ex.choices)) == 4
        assert all(c in ex.prompt for c in ex.choices)
    shipped = stdlib_module_task(heldout_distractors="all")
    assert len({c for ex in shipped.heldout for c in ex.choices}) > 20  # the defect, kept reachable
    assert shipped.train == task.train
    assert [(ex.answer_text, ex.source) for ex in shipped.heldout] == [
        (ex.answer_text, ex.source) for ex in task.heldout
    ]
    with pytest.raises(ConfigError, match="'all' or 'answers'"):
        stdlib_module_task(heldout_distractors="some")


@pytest.mark.parametrize("name", ["stdlib_module", "stdlib_kind", "stdlib_defname"])
def test_heldout_split_does_not_depend_on_n_train(name):
    """Each split has its own generator: a larger training split (e.g. one that carves a bigger
    validation split) leaves every held-out example as it was (with one generator, 0 of 232
    stdlib_module held-out examples survived n_train 300 -> 500). stdlib_kind balances its kinds
    per split size, so only the other two extend their training split as a prefix."""
    small, large = get_task(name, n_train=300), get_task(name, n_train=500)
    assert small.heldout == large.heldout
    if name != "stdlib_kind":
        assert large.train[:300] == small.train
    assert get_task(name, seed=1).heldout != small.heldout  # the seed still redraws it
