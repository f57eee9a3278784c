"""Seeds: replicate r of a run is the one-seed run of seed + r; per-rate median / IQR with a miss as
infinite; the article's envelope reading."""

import math

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import image_task

from lrlab.engine import config, loop, population
from lrlab.optim import members as members_lib
from lrlab.optim import optimizers
from lrlab.store import valleys
from lrlab.studies.lr_valley import lr_valley
from lrlab.task import sampling
from lrlab.training import replicates
from lrlab.training import settings as settings_lib


class TinyDropoutNet(nn.Module):
    """Initialisation, dropout and batch order all change its weights: a replicate must match all three."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(nn.Dropout(0.5, deterministic=not train)(x))


def test_replicate_r_is_the_one_seed_run_of_seed_plus_r(small_data):
    cfg = config.EngineConfig(task=image_task(TinyDropoutNet()), optimizer=optimizers.get("adam"), batch_size=32,
                               eval_chunk=100)
    budget = loop.Budget(max_steps=20, eval_every=10)
    hp = members_lib.population_hparams(cfg.optimizer, [3e-3, 3e-3, 1e-2, 1e-2])
    pop = population.init_population(cfg, hp, 5, seed_K=np.array([5, 6, 5, 6]))
    together = loop.train(pop, small_data, budget, sampling.data_key(5), loop.Programs(cfg), progress=False)
    programs = loop.Programs(cfg)
    for i, (lr, seed) in enumerate([(3e-3, 5), (3e-3, 6), (1e-2, 5), (1e-2, 6)]):
        one = population.init_population(cfg, members_lib.population_hparams(cfg.optimizer, [lr]), seed)
        alone = loop.train(one, small_data, budget, sampling.data_key(seed), programs, progress=False)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(np.asarray(a)[i], np.asarray(b)[0], rtol=2e-5,
                                                                       atol=2e-6), together.final.params,
                               alone.final.params)
    p = together.final.params["Dense_0"]["kernel"]
    assert not np.allclose(p[0], p[1])  # the two seeds differ


def _record(lr, steps, seed, group="adam"):
    return {"optimizer": group, "group": group, "learning_rate": lr, "seed": seed,
            "status": "reached" if steps is not None else "exhausted", "steps_to_target": steps}


def test_aggregates_count_a_miss_as_infinite():
    records = ([_record(0.1, s, i) for i, s in enumerate([300, 100, 200, 500, 400])]  # all reached
               + [_record(1.0, s, i) for i, s in enumerate([100, None, 200, None, 300])]  # 2 misses: median 300
               + [_record(3.0, s, i) for i, s in enumerate([None, None, 100, None, 50])])  # 3 misses: no median
    rows = replicates.aggregate(records[::-1])
    assert [r["learning_rate"] for r in rows] == [0.1, 1.0, 3.0]
    full, two_missed, most_missed = rows
    assert (full["median_steps"], full["q1_steps"], full["q3_steps"], full["iqr_steps"]) == (300, 200, 400, 200)
    assert full["seeds"] == [0, 1, 2, 3, 4] and full["steps_to_target"] == [300, 100, 200, 500, 400]
    assert (two_missed["median_steps"], two_missed["q1_steps"], two_missed["q3_steps"]) == (300, 200, None)
    assert two_missed["reached"] == 3 and two_missed["iqr_steps"] is None
    assert most_missed["median_steps"] is None and most_missed["q1_steps"] == 100
    assert replicates.best(rows)["learning_rate"] == 0.1  # 300 ties 300: the lower rate
    # numpy's linear quantiles where everything is finite
    assert replicates.quantile([3.0, 1.0, 2.0, 10.0], 0.25) == pytest.approx(np.percentile([3, 1, 2, 10], 25))
    assert math.isinf(replicates.quantile([1.0, math.inf], 0.5))


def test_article_envelope_puts_the_slowest_at_the_cap_where_any_optimizer_missed():
    records = [_record(0.1, 200, 0, "adam"), _record(0.1, 400, 0, "sgd"),
               _record(1.0, 300, 0, "adam"), _record(1.0, None, 0, "sgd"),
               _record(10.0, None, 0, "adam"), _record(10.0, None, 0, "sgd")]
    rows = valleys.envelope(records, cap=3000)
    assert [r["slowest_steps"] for r in rows] == [400, 300, None]  # ours: the slowest that reached
    assert [r["article_slowest_steps"] for r in rows] == [400, 3000, 3000]
    assert "article_slowest_steps" not in valleys.envelope(records)[0]


def test_valley_with_seeds_trains_replicates_and_writes_aggregates(tmp_path):
    task = image_task(TinyDropoutNet(), target=0.6)
    settings = settings_lib.SweepSettings(budget=loop.Budget(max_steps=60, eval_every=20), batch_size=32, eval_examples=200,
                                   seeds=3, progress=False)
    members = [members_lib.grid("adam", learning_rate=[1e-4, 1e-2]), members_lib.grid("sgd", learning_rate=[0.1])]
    result = lr_valley(task, members, settings, workdir=tmp_path / "run")
    records = result.records
    assert [(r["optimizer"], r["seed"]) for r in records[:3]] == [("adam", s) for s in (0, 1, 2)]
    assert len(records) == 9 and len({r["learning_rate"] for r in records[:3]}) == 1
    rows = result.summary["rate_aggregates"]
    expected = [("adam", pytest.approx(1e-4)), ("adam", pytest.approx(1e-2)), ("sgd", pytest.approx(0.1))]
    assert [(r["group"], r["learning_rate"]) for r in rows] == expected
    assert rows[1]["reached"] >= 2 and rows[1]["median_steps"] is not None  # 1e-2 trains on most seeds
    assert result.best_median("adam")["learning_rate"] == pytest.approx(1e-2)
    assert all("article_slowest_steps" in row for row in result.summary["envelope"])
    assert (tmp_path / "run" / "valley.png").stat().st_size > 0 and (tmp_path / "run" / "envelope.png").exists()
    assert result.summary["settings"]["seeds"] == 3
    with pytest.raises(ValueError, match="seeds=2"):
        settings_lib.SweepSettings(seeds=2, distinct_seeds=True)
