"""Gate scheduler values (stepped on optimizer steps)."""

import json
import math

import pytest

from olmokit.errors import ConfigError
from olmokit.jola.schedulers import make_scheduler


def test_expon():
    s = make_scheduler("expon", 500)
    assert s.value == pytest.approx(0.1)
    assert s.set_step(100) == pytest.approx(0.1 * math.exp(-1.0))
    assert s.set_step(500) == pytest.approx(
        0.1 * math.exp(-5.0)
    )  # 6.7e-4, as in the reference's 500 steps


def test_linear():
    s = make_scheduler("linear", 200)
    assert [s.set_step(t) for t in (0, 50, 200, 300)] == pytest.approx([0.0, 0.05, 0.2, 0.2])


def test_cyclic():
    s = make_scheduler("cyclic", 100)
    assert [s.set_step(t) for t in (0, 5, 10, 15, 20)] == pytest.approx(
        [0.5, 1.0, 0.5, 0.0, 0.5], abs=1e-12
    )


def test_perform_reacts_to_eval_only():
    s = make_scheduler("perform", 100)
    assert s.value == pytest.approx(0.1)
    s.set_step(10)
    assert s.value == pytest.approx(0.1)  # steps alone do not move it
    s.on_evaluate(2.0)  # first evaluation: nothing to compare with
    assert s.value == pytest.approx(0.1)
    s.on_evaluate(1.5)
    assert s.value == pytest.approx(0.11)
    s.on_evaluate(1.7)
    s.on_evaluate(1.9)
    assert s.value == pytest.approx(0.09)
    for _ in range(20):
        s.on_evaluate(5.0)
    assert s.value == 0.0  # clipped


def test_constant_and_unknown():
    assert make_scheduler(None).value == 1.0
    assert make_scheduler("constant").set_step(99) == 1.0
    with pytest.raises(ConfigError, match="expon, linear, cyclic, perform, constant"):
        make_scheduler("weekly")


@pytest.mark.parametrize("name", ["expon", "linear", "cyclic", "perform", "constant"])
def test_state_round_trip(name):
    """What a checkpoint stores lets a fresh scheduler continue exactly (resumed runs)."""
    s = make_scheduler(name, 40)
    for step, loss in ((3, 2.0), (6, 1.5), (9, 1.7)):
        s.set_step(step)
        s.on_evaluate(loss)
    fresh = make_scheduler(name)
    fresh.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert (fresh.step, fresh.total_steps, fresh.value) == (9, 40, s.value)
    for step, loss in ((12, 1.2), (15, 1.3)):
        s.set_step(step)
        s.on_evaluate(loss)
        fresh.set_step(step)
        fresh.on_evaluate(loss)
        assert fresh.value == s.value
    with pytest.raises(ConfigError, match=f"checkpoint has gate scheduler '{name}'"):
        make_scheduler("expon" if name != "expon" else "linear").load_state_dict(s.state_dict())
