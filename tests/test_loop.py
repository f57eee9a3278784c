"""The one segment loop (engine/loop.py): budgets checked at construction, hooks called after every
segment and able to end the run, and a population equal to one trained without hooks."""

import jax
import numpy as np
import pytest
from conftest import make_cfg, run_population

from lrlab.engine import loop


@pytest.mark.parametrize("kw, match", [({"max_steps": 0}, "at least 1"), ({"eval_every": 0}, "at least 1"),
                                       ({"max_seconds": 0.0}, "positive"), ({"max_steps": 10, "eval_every": 20},
                                                                            "above max_steps")])
def test_bad_budgets_are_one_line(kw, match):
    with pytest.raises(ValueError, match=match):
        loop.Budget(**kw)


class Counting(loop.Hook):
    name = "counting"

    def __init__(self, stop_after=None):
        self.seen, self.stop_after = [], stop_after

    def after_segment(self, run, metrics):
        self.seen.append(run.step)
        if self.stop_after and len(self.seen) >= self.stop_after:
            run.finish("counted")


def test_hooks_see_every_segment_and_can_end_the_run(small_data):
    cfg = make_cfg("sgd")
    budget = loop.Budget(max_steps=40, eval_every=10)
    programs = loop.Programs(cfg)
    plain = run_population(cfg, [0.01, 0.1], small_data, budget, programs=programs)
    hook = Counting()
    hooked = run_population(cfg, [0.01, 0.1], small_data, budget, programs=programs, hooks=[hook])
    assert hook.seen == [10, 20, 30, 40]
    jax.tree_util.tree_map(np.testing.assert_array_equal, hooked.final.params, plain.final.params)
    stopper = Counting(stop_after=2)
    stopped = run_population(cfg, [0.01, 0.1], small_data, budget, programs=programs, hooks=[stopper])
    assert stopper.seen == [10, 20] and int(np.max(stopped.final.steps_trained)) == 20
