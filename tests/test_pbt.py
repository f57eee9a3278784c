"""PBT: exploit/explore on a toy population (who copies whom, copied state identical to the source,
hyperparameters perturbed or resampled within bounds, the rest untouched, deterministic, no
recompilation), the lineage functions, a tiny in-process run (lineage consistent with its events,
and a resumed run equal to an uninterrupted one), and the command end to end with a bad flag."""

import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import hparams, make_cfg

from lrlab.engine import loop, population, stop
from lrlab.optim import members as members_lib
from lrlab.optim import optimizers
from lrlab.store import files
from lrlab.store.workdir import Workdir
from lrlab.studies import pbt
from lrlab.task import classification, models
from lrlab.training import exploit_explore
from lrlab.training import settings as settings_lib

K = 10
LR_K = np.geomspace(1e-4, 1.0, K).astype(np.float32)
SCORE_K = np.array([0.5, 0.9, 0.1, 0.8, 0.3, 0.95, 0.2, 0.7, 0.6, 0.4], np.float32)  # top: 5, 1; bottom: 2, 6
LR_BOUND = exploit_explore.Bound("learning_rate", 1e-6, 100.0, True)
TINY = ["--model=mlp", "--num_lrs=4", "--lr_min=1e-4", "--lr_max=1", "--max_steps=40", "--eval_every=10",
        "--ready_steps=10", "--eval_examples=250", "--batch_size=32", "--target_accuracy=0.99", "--noprogress"]


def command(*args):
    return [sys.executable, "-m", "lrlab.experiments.pbt", *args]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """The command end to end and with a bad flag, started at once so they overlap the in-process tests."""
    root = tmp_path_factory.mktemp("pbt_cli")
    # one device, as the in-process run it is compared with (another split of the members: other float sums)
    procs = {"run": subprocess.Popen(command(f"--workdir={root / 'run'}", *TINY, "--cpu_devices=1"),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
             "bad": subprocess.Popen(command(f"--workdir={root / 'bad'}", "--explore=learning_rate,momentum", *TINY),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)}
    yield root, procs
    for proc in procs.values():
        proc.kill()


@pytest.fixture(scope="module")
def toy(cli_runs):
    """A population of K MLPs whose every leaf differs between members (so a copy shows)."""
    cfg = make_cfg("adam", model=models.make_model("mlp"), distinct_seeds=True)
    pop = population.init_population(cfg, hparams("adam", LR_K), seed=0)

    def distinct(x):
        offset = jnp.arange(K).reshape((K,) + (1,) * (x.ndim - 1))
        return x + (offset.astype(x.dtype) * 0.01 if jnp.issubdtype(x.dtype, jnp.floating) else offset.astype(x.dtype))

    pop = pop.replace(params=jax.tree_util.tree_map(distinct, pop.params),
                      opt_state=jax.tree_util.tree_map(distinct, pop.opt_state),
                      steps_trained=jnp.full((K,), 100, jnp.int32) + jnp.arange(K, dtype=jnp.int32),
                      target_value=jnp.asarray(SCORE_K), loss=jnp.arange(K, dtype=jnp.float32))
    hyper = dict(pop.opt_state.hyperparams, learning_rate=jnp.asarray(LR_K))  # distinct() shifted them
    return pop.replace(opt_state=pop.opt_state._replace(hyperparams=hyper))


def explore(truncation=0.2, resample=0.0, bounds=(LR_BOUND,), factors=(0.8, 1.2)):
    config = exploit_explore.PBTConfig(ready_steps=10, truncation=truncation, perturb_factors=factors,
                                       resample_probability=resample, explore=tuple(bounds))
    return exploit_explore.explore_arrays(config)


@functools.cache
def exploit_fn(names=("learning_rate",)):
    return jax.jit(functools.partial(exploit_explore.exploit_explore, names=names))


def leaves_by_path(pop):
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in jax.tree_util.tree_leaves_with_path(pop)}


def check_copies(old, new, source_K, explored=("learning_rate",)):
    """Every leaf of every slot equals its source's, except the slot's member id and key, the status
    of a replaced slot (running) and the explored hyperparameters of a replaced slot."""
    before, after = leaves_by_path(old), leaves_by_path(new)
    replaced = source_K != np.arange(K)
    assert before.keys() == after.keys()
    for path, x in before.items():
        y = after[path]
        if path in (".member", ".rng"):
            np.testing.assert_array_equal(y, x, err_msg=path)
        elif path == ".status":
            np.testing.assert_array_equal(y, np.where(replaced, population.RUNNING, x))
        elif any(f"'{name}'" in path for name in explored):
            np.testing.assert_array_equal(y[~replaced], x[~replaced], err_msg=path)
        else:
            np.testing.assert_array_equal(y, x[source_K], err_msg=path)


def test_bottom_members_copy_top_members_and_perturb_their_rate(toy):
    sources = set()
    for seed in range(6):
        new, source_K = exploit_fn()(toy, jnp.asarray(SCORE_K), jax.random.PRNGKey(seed), explore())
        source_K = np.asarray(source_K)
        replaced = np.flatnonzero(source_K != np.arange(K))
        assert replaced.tolist() == [2, 6]  # the bottom 20%: scores 0.1 and 0.2
        assert set(source_K[replaced]) <= {5, 1}  # the top 20%: 0.95 and 0.9
        sources |= set(source_K[replaced])
        check_copies(toy, new, source_K)
        lr_new = np.asarray(new.opt_state.hyperparams["learning_rate"])
        for m in replaced:  # the source's rate x0.8 or x1.2 (in float32)
            lr_src = LR_K[source_K[m]]
            assert lr_new[m] in (np.float32(lr_src * np.float32(0.8)), np.float32(lr_src * np.float32(1.2)))
    assert sources == {5, 1}  # both top members get picked over a few keys
    again, source_again = exploit_fn()(toy, jnp.asarray(SCORE_K), jax.random.PRNGKey(5), explore())
    assert np.array_equal(np.asarray(source_again), source_K)  # deterministic for a key
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(new)))


def test_diverged_members_are_always_replaced(toy):
    status = np.zeros(K, np.int32)
    status[[3, 5, 9]] = population.DIVERGED  # 5 had the best score: a diverged member scores -inf
    pop = toy.replace(status=jnp.asarray(status))
    new, source_K = exploit_fn()(pop, jnp.asarray(SCORE_K), jax.random.PRNGKey(0), explore())
    source_K = np.asarray(source_K)
    replaced = np.flatnonzero(source_K != np.arange(K))
    assert replaced.tolist() == [3, 5, 9]  # more than the bottom 20%: every diverged one (2 and 6 stay)
    assert set(source_K[replaced]) <= {1, 7}  # the best healthy members
    assert (np.asarray(new.status)[replaced] == population.RUNNING).all()
    check_copies(pop, new, source_K)


def test_padding_takes_no_part_and_truncation_is_data(toy):
    status = np.zeros(K, np.int32)
    status[[5, 1]] = population.PADDING  # the two best scores, but padding
    pop = toy.replace(status=jnp.asarray(status))
    fn = exploit_fn()
    new, source_K = fn(pop, jnp.asarray(SCORE_K), jax.random.PRNGKey(0), explore(truncation=0.5))
    source_K = np.asarray(source_K)
    replaced = np.flatnonzero(source_K != np.arange(K))
    assert sorted(replaced) == [2, 4, 6, 9]  # 8 real members, half of them: the lowest four
    assert set(source_K[replaced]) <= {0, 3, 7, 8}  # the best four real ones
    check_copies(pop, new, source_K)
    fn(pop, jnp.asarray(SCORE_K), jax.random.PRNGKey(0), explore(truncation=0.25, resample=0.5, factors=(0.5, 2.0)))
    assert fn._cache_size() == 1  # other truncation, factors, resampling: the same program


def test_resampled_and_clipped_hyperparameters_stay_in_bounds(toy):
    scores = SCORE_K.copy()
    scores[9] = 0.99  # the top member now has lr 1.0; lr x1.2 is clipped to a bound of 1.1
    b1 = exploit_explore.Bound("b1", 0.0, 0.99, False)
    fn = exploit_fn(("learning_rate", "b1"))
    for seed in range(4):
        new, source_K = fn(toy, jnp.asarray(scores), jax.random.PRNGKey(seed),
                           explore(bounds=(exploit_explore.Bound("learning_rate", 1e-3, 1.1, True), b1)))
        source_K = np.asarray(source_K)
        replaced = source_K != np.arange(K)
        lr, beta1 = (np.asarray(new.opt_state.hyperparams[n]) for n in ("learning_rate", "b1"))
        b1_src = np.asarray(toy.opt_state.hyperparams["b1"])[source_K]
        for m in np.flatnonzero(replaced):
            assert np.isclose(lr[m], min(1.1, LR_K[source_K[m]] * 1.2), rtol=1e-6) or np.isclose(
                lr[m], LR_K[source_K[m]] * 0.8, rtol=1e-6)
            assert np.isclose(beta1[m], min(0.99, b1_src[m] * 1.2), rtol=1e-6) or np.isclose(
                beta1[m], b1_src[m] * 0.8, rtol=1e-6)
        check_copies(toy, new, source_K, ("learning_rate", "b1"))
    new, source_K = fn(toy, jnp.asarray(scores), jax.random.PRNGKey(0),
                       explore(resample=1.0, bounds=(exploit_explore.Bound("learning_rate", 1e-3, 1e-2, True), b1)))
    replaced = np.asarray(source_K) != np.arange(K)
    lr = np.asarray(new.opt_state.hyperparams["learning_rate"])[replaced]
    assert ((lr >= 1e-3) & (lr <= 1e-2)).all() and len(set(lr)) == replaced.sum()  # fresh draws within bounds


def test_lineage_follows_sources_back():
    sources = np.array([[0, 1, 1, 3], [2, 1, 2, 3], [0, 1, 2, 0]])  # events at steps 10, 20, 30
    # slot 3 copied slot 0 at the last event, which had copied slot 2, which had copied slot 1
    assert exploit_explore.lineage(sources, 3).tolist() == [1, 2, 0, 3]
    assert exploit_explore.lineage(sources, 1).tolist() == [1, 1, 1, 1]
    assert exploit_explore.lineage(np.zeros((0, 4), int), 2).tolist() == [2]
    lr = np.array([[1, 2, 3, 4], [1, 2, 2.4, 4], [2.4, 2, 2.4, 4], [2.4, 2, 2.4, 3]])
    assert exploit_explore.lineage_values(lr, exploit_explore.lineage(sources, 3)).tolist() == [2, 2.4, 2.4, 3]
    assert exploit_explore.interval_of([10, 20, 25, 30, 40], [10, 20, 30]).tolist() == [0, 1, 2, 2, 3]  # eval, then event


def test_parse_explore():
    adam = optimizers.get("adam")
    assert exploit_explore.parse_explore(["learning_rate"], adam) == (LR_BOUND,)
    assert exploit_explore.parse_explore(["b1:0.5:0.95", "eps"], adam) == (exploit_explore.Bound("b1", 0.5, 0.95, False),
                                                               exploit_explore.Bound("eps", 1e-10, 1e-4, True))
    for entries, needle in [(["momentum"], "adam has no hyperparameter 'momentum'"), (["b1", "b1"], "twice"),
                            (["b1:0.9"], "is not NAME or NAME:LOW:HIGH"), (["b1:0.9:0.5"], "low < high"),
                            (["learning_rate:0:1"], r"learning_rate must be finite and in \(0, inf\]"),
                            (["b1:0.5:1.5"], r"b1 must be finite and in \[0, 1\), got 1.5"),
                            (["b1:a:1"], "could not convert"), ([], "at least")]:
        with pytest.raises(ValueError, match=needle):
            exploit_explore.parse_explore(entries, adam)


class StopAfter:
    """A StopSignal stand-in: asks to stop from the n-th segment boundary on (SIGTERM)."""

    def __init__(self, n):
        self.reads, self.n = 0, n

    @property
    def requested(self):
        self.reads += 1
        return "SIGTERM" if self.reads >= self.n else None


def check_lineage(r):
    """The best lineage and its schedule follow the recorded sources back; kept slots keep their rate,
    replaced ones copy the top scorer's, perturbed or resampled within bounds."""
    k = r.k
    lr = r.hparams_E1K["learning_rate"]
    for e, source_K in enumerate(r.sources_EK):
        replaced = np.flatnonzero(source_K != np.arange(k))
        assert len(replaced) >= 1  # the bottom 1 of 4 (and any diverged member) copies the top 1
        assert all(r.scores_EK[e][source_K[m]] == r.scores_EK[e].max() for m in replaced)
        kept = source_K == np.arange(k)
        np.testing.assert_array_equal(lr[e + 1][kept], lr[e][kept])
        for m in replaced:
            src = lr[e][source_K[m]]
            assert lr[e + 1][m] in (np.float32(src * np.float32(0.8)), np.float32(src * np.float32(1.2))) or (
                1e-6 <= lr[e + 1][m] <= 100)
    np.testing.assert_array_equal(np.asarray(r.final.opt_state.hyperparams["learning_rate"]), lr[-1])
    slots = r.best_lineage
    assert slots[-1] == r.best_member == int(np.argmax(r.value_TK[-1]))
    for e, source_K in enumerate(r.sources_EK):
        assert slots[e] == source_K[slots[e + 1]]
    schedule = r.schedule_of("learning_rate")
    assert schedule["step"] == [0, *r.event_steps.tolist()] and schedule["slot"] == slots.tolist()
    assert schedule["learning_rate"] == [float(lr[i, s]) for i, s in enumerate(slots)]
    interval = exploit_explore.interval_of(r.step_T, r.event_steps)
    assert r.lineage_values().tolist() == [r.value_TK[t, slots[i]] for t, i in enumerate(interval)]


def test_command_and_a_resumed_run_agree_on_a_consistent_lineage(cli_runs, mnist, tmp_path):
    """The command's run (uninterrupted) against the same run in process, stopped by SIGTERM after
    two segments and resumed from its checkpoint: the same curves, events, rates and lineage."""
    root, procs = cli_runs
    settings = settings_lib.SweepSettings(budget=loop.Budget(40, None, 10), batch_size=32, eval_examples=250,
                                   progress=False)
    task = classification.image_classification(models.make_model("mlp"), mnist, target_accuracy=0.99)
    cfg = exploit_explore.PBTConfig(ready_steps=10)
    members = members_lib.grid("adam", learning_rate=np.geomspace(1e-4, 1.0, 4))
    hp = members.hparams
    with Workdir(tmp_path, "pbt", checkpoint_every=1) as run, pytest.raises(stop.Interrupted):
        exploit_explore.run_pbt(task, members, cfg, settings, scope=run.scope(), stop=StopAfter(2))  # after 2 ready events
    with Workdir(tmp_path, "pbt", checkpoint_every=1) as run:
        r = exploit_explore.run_pbt(task, members, cfg, settings, scope=run.scope())
    assert r.step_T.tolist() == [10, 20, 30, 40] and r.event_steps.tolist() == [10, 20, 30]
    assert r.model_steps == 4 * 40 and r.stopped_by == "max_steps" and r.steps_to_target is None
    np.testing.assert_array_equal(r.hparams_E1K["learning_rate"][0], hp["learning_rate"])
    np.testing.assert_array_equal(r.scores_EK, r.value_TK[:3])  # ranked at the ready step's evaluation
    check_lineage(r)

    out, err = procs["run"].communicate(timeout=300)
    assert procs["run"].returncode == 0, err
    workdir = root / "run"
    assert "model-steps" in out and f"saved results: {workdir / 'results.json'}" in out
    assert (workdir / "pbt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    s = json.loads((workdir / "results.json").read_text())
    assert s["experiment"] == "pbt" and s["members"] == 4 and s["steps_run"] == 40 and s["model_steps"] == 160
    assert s["stopped_by"] == "max_steps" and s["steps_to_target"] is None  # 99%: out of reach in 40 steps
    mine = json.loads(json.dumps(files.finite_or_none(exploit_explore.result_json(r, "train_accuracy", None, 32))))
    for key in ("initial_hyperparameters", "events", "curves", "hyperparameter_schedules", "steps_run"):
        assert s[key] == mine[key], key  # as written there
    for key in ("final_test_accuracy", "final_test_loss"):
        s["best"].pop(key)
    assert s["best"] == mine["best"]
    assert pbt.format_summary(s).splitlines()[0].startswith("PBT adam: 4 members, 3 ready events")
    out, err = procs["bad"].communicate(timeout=300)
    message = "--explore: 'momentum': adam has no hyperparameter 'momentum' (it has learning_rate, b1, b2, eps)"
    assert procs["bad"].returncode == 1 and err.strip() == f"lrlab: error: {message}"
    assert not (root / "bad").exists()


def test_explore_takes_the_command_lines_strings_from_python():
    from lrlab.optim import optimizers

    adam = optimizers.get("adam")
    given = exploit_explore.PBTConfig(explore=("learning_rate:1e-4:0.3", "b1"))
    assert given.names == ("learning_rate", "b1")
    resolved = given.resolved(adam)
    assert resolved.explore == exploit_explore.parse_explore(["learning_rate:1e-4:0.3", "b1"], adam)
    with pytest.raises(ValueError, match="explored twice"):
        exploit_explore.PBTConfig(explore=("learning_rate", exploit_explore.Bound("learning_rate", 1e-4, 1.0, True)))
