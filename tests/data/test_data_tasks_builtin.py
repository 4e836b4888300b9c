"""The built-in tasks beyond stdlib_module: sizes, determinism, split hygiene, label balance."""

from collections import Counter

import pytest

from olmokit.data.stdlib import is_held_out
from olmokit.data.tasks import (
    KINDS,
    TASKS,
    get_task,
    stdlib_defname_task,
    stdlib_kind_task,
    stdlib_module_say_task,
)


def _file(ex) -> str:
    return ex.source.removeprefix("stdlib:").rsplit(":", 1)[0]


@pytest.fixture(scope="module")
def kind():
    return stdlib_kind_task()


@pytest.fixture(scope="module")
def defname():
    return stdlib_defname_task()


def test_registry():
    assert set(TASKS) == {"stdlib_module", "stdlib_kind", "stdlib_defname", "stdlib_module_say"}


def test_kind_is_balanced_and_split_by_file(kind):
    assert len(kind.train) == 400 and 120 <= len(kind.heldout) <= 300
    for split in (kind.train, kind.heldout):
        counts = Counter(ex.answer_text for ex in split)
        assert set(counts) == set(KINDS) and max(counts.values()) == min(counts.values())
    assert all(ex.choices == KINDS for ex in kind.train[:20])
    assert not any(is_held_out(f"file:{_file(ex)}") for ex in kind.train)
    assert all(is_held_out(f"file:{_file(ex)}") for ex in kind.heldout)
    texts = lambda s: {ex.prompt.split("\n\n")[1] for ex in s}  # noqa: E731
    assert not texts(kind.train) & texts(kind.heldout)
    # a method docstring comes from a method (class.name), a module's from <module>
    for ex in kind.train[:100]:
        qual = ex.source.rsplit(":", 1)[1]
        assert (qual == "<module>") == (ex.answer_text == "module")
        if ex.answer_text == "method":
            assert "." in qual


def test_defname_answers_are_in_their_def_line(defname):
    assert len(defname.train) == 400 and len(defname.heldout) == 300
    for ex in defname.train[:50] + defname.heldout[:50]:
        assert len(ex.choices) == 1 and f"def {ex.answer_text}(" in ex.prompt
    names = lambda s: {ex.answer_text for ex in s}  # noqa: E731
    assert not names(defname.train) & names(defname.heldout)  # no name on both sides
    assert all(is_held_out(f"file:{_file(ex)}") for ex in defname.heldout)


def test_module_say_is_stdlib_module_answered_by_name():
    say = stdlib_module_say_task(n_train=40, n_heldout=20)
    mc = get_task("stdlib_module", n_train=40, n_heldout=20)
    assert [ex.answer_text for ex in say.heldout] == [ex.answer_text for ex in mc.heldout]
    assert all(len(ex.choices) == 1 and ex.prompt.startswith(m.prompt)
               for ex, m in zip(say.train, mc.train))  # fmt: skip


def test_deterministic(kind, defname):
    assert stdlib_kind_task() == kind and stdlib_defname_task() == defname
    assert stdlib_kind_task(seed=1).train != kind.train
