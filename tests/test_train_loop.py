"""The shared training loop, on the tiny classifier in tests/toy_main.py (2 fake CPU devices)."""

import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from common import checkpoint, config as config_lib, metrics, parallel, trainer, tree
from tests import toy_config, toy_main
from tests.conftest import REPO, set_dotted, subprocess_env


def run(workdir, **overrides):
  c = set_dotted(toy_config.get_config(), **overrides)
  return trainer.train(c, str(workdir), toy_main.make_task(c)), c


def params_of(state):
  return jax.tree.map(np.asarray, jax.device_get(state["params"]))


def test_two_devices_and_sharding():
  assert jax.device_count() == 2
  mesh = parallel.make_mesh()
  batch = parallel.to_global({"x": np.arange(8.0).reshape(4, 2)}, mesh)
  assert batch["x"].sharding.spec == parallel.data_sharding(mesh).spec
  assert {s.data.shape for s in batch["x"].addressable_shards} == {(2, 2)}
  with pytest.raises(ValueError, match="does not divide by the 2 devices"):
    parallel.local_batch_size(7)


def test_tiny_model_loss_goes_down(tmp_path):
  state, _ = run(tmp_path, total_steps=40, log_every_steps=5, eval_every_steps=20)
  rows = [r for r in metrics.read_jsonl(tmp_path / "metrics.jsonl") if "train/loss" in r]
  first, last = rows[0]["train/loss"], rows[-1]["train/loss"]
  assert last < 0.8 * first, (first, last)
  evals = [r for r in metrics.read_jsonl(tmp_path / "metrics.jsonl") if "val/accuracy" in r]
  assert evals[-1]["val/loss"] < 0.9 * np.log(4)  # clearly better than chance
  assert int(state["step"]) == 40
  # params replicated over the mesh, step counter exact
  leaf = jax.tree.leaves(state["params"])[0]
  assert leaf.sharding.is_fully_replicated
  assert (tmp_path / "tensorboard").is_dir()


def test_resume_is_bitwise_identical(tmp_path):
  full, _ = run(tmp_path / "full", total_steps=8, ckpt_every_steps=4, eval_every_steps=100)

  # Interrupt at step 4 through the SIGTERM path, then restart in the same workdir.
  class Stop:
    def __call__(self, state, step):
      if step == 4:
        os.kill(os.getpid(), signal.SIGTERM)
      return {}

  c = toy_config.get_config()
  c.total_steps, c.ckpt_every_steps, c.eval_every_steps, c.keep_best = 8, 100, 1, 0
  task = toy_main.make_task(c)
  task.eval_fn = Stop()
  with pytest.raises(trainer.Preempted, match="step 4"):
    trainer.train(c, str(tmp_path / "split"), task)
  assert checkpoint.Checkpointer(str(tmp_path / "split" / "checkpoints")).latest_step() == 4
  resumed, _ = run(tmp_path / "split", total_steps=8, ckpt_every_steps=4, eval_every_steps=100)
  for a, b in zip(jax.tree.leaves(params_of(full)), jax.tree.leaves(params_of(resumed))):
    np.testing.assert_array_equal(a, b)


def test_data_iterator_resumes_at_the_same_batch(tmp_path):
  from common import data
  x = np.arange(64, dtype=np.float32).reshape(64, 1)
  make = lambda: data.train_iterator(data.ArraySource("ids", x=x), local_batch=4, seed=3)
  it = make()
  for _ in range(5):
    next(it)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ck"), async_save=False)
  state = {"w": jax.numpy.zeros(3)}
  ckpt.save(5, state, it)
  expected = [next(it)["x"].copy() for _ in range(20)]  # crosses an epoch boundary (16 batches/epoch)
  ckpt.close()
  restored_state, it2 = checkpoint.Checkpointer(str(tmp_path / "ck")).restore(state, make())
  got = [next(it2)["x"] for _ in range(20)]
  np.testing.assert_array_equal(np.stack(expected), np.stack(got))
  # each epoch is a fresh permutation covering every example exactly once (per process)
  it3 = make()
  epoch1 = np.concatenate([next(it3)["x"] for _ in range(16)]).ravel()
  epoch2 = np.concatenate([next(it3)["x"] for _ in range(16)]).ravel()
  assert sorted(epoch1) == sorted(epoch2) == list(range(64)) and not np.array_equal(epoch1, epoch2)


def test_device_prefetch_state_is_the_next_batch_handed_out(tmp_path):
  from common import data
  x = np.arange(64, dtype=np.float32).reshape(64, 1)
  make = lambda: data.DevicePrefetch(data.train_iterator(data.ArraySource("ids", x=x), local_batch=4, seed=3),
                                     place=lambda b: b, depth=3)
  it = make()
  for _ in range(5):
    next(it)
  state = it.get_state()  # 3 batches are in flight: the state points at the 6th
  expected = [next(it)["x"] for _ in range(4)]
  again = make()
  again.set_state(state)
  np.testing.assert_array_equal(np.stack([next(again)["x"] for _ in range(4)]), np.stack(expected))


def test_data_on_device_equals_the_host_pipeline(tmp_path):
  host, _ = run(tmp_path / "host", total_steps=6, device_flip=True, eval_every_steps=100)
  dev, c = run(tmp_path / "dev", total_steps=6, device_flip=True, eval_every_steps=100, data_on_device=True)
  for a, b in zip(jax.tree.leaves(params_of(host)), jax.tree.leaves(params_of(dev))):
    np.testing.assert_array_equal(a, b)
  rows = [r for r in metrics.read_jsonl(tmp_path / "dev" / "metrics.jsonl") if "perf/input_wait_fraction" in r]
  assert rows and all(0.0 <= r["perf/input_wait_fraction"] <= 1.0 for r in rows)
  c = set_dotted(toy_config.get_config(), total_steps=2, data_on_device=True)  # host flips are random: refused
  with pytest.raises(ValueError, match="data_on_device keeps the host-side split fixed.*RandomFlip"):
    trainer.train(c, str(tmp_path / "refused"), toy_main.make_task(c))


def test_freezing_gives_no_state_and_no_update(tmp_path):
  c = toy_config.get_config()
  c.total_steps, c.optim.freeze = 6, ("conv/.*",)
  task = toy_main.make_task(c)
  init = jax.device_get(task.init_variables(jax.random.split(jax.random.key(c.seed))[0])["params"])
  state = trainer.train(c, str(tmp_path), task)
  final = params_of(state)
  np.testing.assert_array_equal(final["conv"]["kernel"], init["conv"]["kernel"])
  assert not np.array_equal(final["head"]["kernel"], init["head"]["kernel"])
  opt_keys = {k for leaf in jax.tree.leaves(state["opt_state"], is_leaf=lambda x: isinstance(x, dict))
              if isinstance(leaf, dict) for k in leaf}
  assert opt_keys and all(k.startswith("head/") for k in opt_keys), opt_keys


def test_eval_mean_is_exact_over_partial_batches():
  from common import data
  values = np.random.default_rng(0).normal(size=(37,)).astype(np.float32)
  src = data.ArraySource("vals", v=values)
  mesh = parallel.make_mesh()
  batches = list(data.eval_batches(src, global_batch=8, local_batch=8))
  assert len(batches) == 5 and batches[-1]["mask"].sum() == 5
  got = trainer.evaluate(lambda state, b: {"v": b["v"]}, {}, iter(batches), mesh)
  np.testing.assert_allclose(got["v"], values.mean(), rtol=1e-6)


@pytest.mark.parametrize("name,schedule", [("adam", "cosine"), ("adamw", "constant"), ("sgd", "constant")])
def test_optimizer_variants_train(tmp_path, name, schedule):
  state, _ = run(tmp_path, total_steps=4, **{"optim.name": name, "optim.schedule": schedule, "optim.lr": 0.01})
  assert int(state["step"]) == 4


def test_profiler_trace_for_a_step_range(tmp_path):
  run(tmp_path, total_steps=3, **{"profile.start_step": 1, "profile.num_steps": 1})
  traces = [f for _, _, files in os.walk(tmp_path / "profile") for f in files]
  assert any(f.endswith((".xplane.pb", ".trace.json.gz")) for f in traces), traces


def test_keep_latest_and_best(tmp_path):
  run(tmp_path, total_steps=12, ckpt_every_steps=2, eval_every_steps=4, keep_ckpts=1, keep_best=1)
  kept = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  evals = {r["step"]: r["val/loss"] for r in metrics.read_jsonl(tmp_path / "metrics.jsonl") if "val/loss" in r}
  best = min(evals, key=evals.get)
  assert kept == sorted({12, best}), (kept, evals)


def _cli(workdir, *args, **env):
  return subprocess.run([sys.executable, "-m", "tests.toy_main", "--config", "tests/toy_config.py",
                         "--workdir", str(workdir), *args], cwd=REPO, env=subprocess_env(**env),
                        capture_output=True, text=True, timeout=300)


def test_cli_overrides_and_errors(tmp_path):
  r = _cli(tmp_path / "a", "--config.total_steps=2", "--config.optim.lr=0.01")
  assert r.returncode == 0, r.stderr
  cfg = (tmp_path / "a" / "config.json").read_text()
  assert '"total_steps": 2' in cfg and '"lr": 0.01' in cfg
  r = _cli(tmp_path / "b", "--config.no_such_key=1")
  assert r.returncode != 0 and "no_such_key" in r.stderr
  r = _cli(tmp_path / "c", "--config.total_steps=abc")
  assert r.returncode != 0 and "flags parsing error: flag --config.total_steps=abc" in r.stderr.lower()
  r = _cli(tmp_path / "d", "--config.batch_size=7")
  assert r.returncode == 2 and "error: batch_size=7 does not divide by the 2 devices" in r.stderr
  assert not (tmp_path / "d" / "config.json").exists()  # inputs are checked before anything is written


def test_saved_config_is_the_config_that_ran_and_reproduces_it(tmp_path):
  r = _cli(tmp_path / "a", "--config.total_steps=4", "--config.freeze_head=True", "--config.eval_every_steps=2")
  assert r.returncode == 0, r.stderr
  saved = config_lib.from_json(str(tmp_path / "a" / "config.json"))
  assert saved.optim.freeze == ("head/.*",) and "derived config: optim.freeze" in r.stderr
  # Passed back with --config, the recorded config runs the same training and records itself unchanged
  # (the derivation is idempotent: the pattern is not appended twice).
  r = subprocess.run([sys.executable, "-m", "tests.toy_main", "--config", str(tmp_path / "a" / "config.json"),
                      "--workdir", str(tmp_path / "b")], cwd=REPO, env=subprocess_env(), capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert (tmp_path / "b" / "config.json").read_text() == (tmp_path / "a" / "config.json").read_text()
  a, b = (checkpoint.load_trained_params(str(tmp_path / w))[0] for w in "ab")
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  init = toy_main.TinyNet().init(jax.random.split(jax.random.key(0))[0], np.zeros((1, 8, 8, 3), np.float32))
  np.testing.assert_array_equal(a["head"]["kernel"], init["params"]["head"]["kernel"])  # frozen as recorded
  assert not np.array_equal(a["conv"]["kernel"], init["params"]["conv"]["kernel"])


def test_config_from_json_errors(tmp_path):
  (tmp_path / "bad.json").write_text("{not json")
  with pytest.raises(ValueError, match="bad.json is not valid JSON"):
    config_lib.from_json(str(tmp_path / "bad.json"))
  with pytest.raises(FileNotFoundError, match="cannot read config"):
    config_lib.from_json(str(tmp_path / "missing.json"))
  (tmp_path / "list.json").write_text("[1, 2]")
  with pytest.raises(ValueError, match="not a config object"):
    config_lib.from_json(str(tmp_path / "list.json"))


def test_nan_stops_the_run_and_is_never_saved(tmp_path):
  r = _cli(tmp_path, "--config.nan_at_step=5", "--config.total_steps=12", "--config.log_every_steps=4",
           "--config.ckpt_every_steps=2")
  assert r.returncode == 2, r.stderr
  assert "became nan or inf somewhere within steps [4, 6]" in r.stderr
  kept = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert kept and max(kept) <= 4, kept


def test_sigterm_saves_and_restart_resumes(tmp_path):
  cmd = [sys.executable, "-m", "tests.toy_main", "--config", "tests/toy_config.py:steps=100000",
         "--workdir", str(tmp_path), "--config.log_every_steps=1", "--config.ckpt_every_steps=100000",
         "--config.eval_every_steps=100000"]
  proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stderr=subprocess.PIPE, text=True)
  for line in proc.stderr:  # wait until training is under way
    if "step 3/" in line:
      break
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err
  assert "preempted at step" in err
  saved = checkpoint.Checkpointer(str(tmp_path / "checkpoints")).latest_step()
  assert saved is not None and 3 <= saved < 100000
  r = _cli(tmp_path, f"--config.total_steps={saved + 2}")
  assert r.returncode == 0, r.stderr
  rows = metrics.read_jsonl(tmp_path / "metrics.jsonl")
  assert rows[-1]["step"] == saved + 2 and "restored checkpoint step" in r.stderr


def test_update_control_follows_torch_plateau_and_early_stopping():
  c = toy_config.get_config()
  c.plateau.metric, c.plateau.mode, c.plateau.patience, c.plateau.factor = "val/auc", "max", 1, 0.5
  c.early_stop.metric, c.early_stop.mode, c.early_stop.patience = "val/auc", "max", 3
  control = jax.tree.map(np.asarray, trainer.initial_control())
  history = []
  for auc in (0.6, 0.7, 0.7, 0.65, 0.69, 0.8, 0.5):
    control, stop = trainer.update_control(control, {"val/auc": auc}, c)
    history.append((float(control["lr_scale"]), int(control["stop_bad"]), stop))
  # torch ReduceLROnPlateau(patience=1): the 2nd evaluation in a row without improvement halves the lr
  assert [h[0] for h in history] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]
  assert [h[1] for h in history] == [0, 0, 1, 2, 3, 0, 1]
  assert [h[2] for h in history] == [False, False, False, False, True, False, False]
  c.plateau.metric = "val/nope"
  with pytest.raises(ValueError, match="val/nope.*available: val/auc"):
    trainer.update_control(control, {"val/auc": 0.5}, c)


def test_early_stopping_ends_the_run_and_plateau_scales_the_lr(tmp_path):
  # val/accuracy of the toy task saturates quickly; mode=min on it can never improve after the first eval
  state, c = run(tmp_path, total_steps=40, eval_every_steps=2, log_every_steps=2, **{
      "early_stop.metric": "val/accuracy", "early_stop.mode": "min", "early_stop.patience": 2,
      "plateau.metric": "val/accuracy", "plateau.mode": "min", "plateau.patience": 0, "plateau.factor": 0.5})
  # evals at 2 (best), 4 (bad 1), 6 (bad 2 -> stop)
  assert int(state["step"]) == 6
  assert float(jax.device_get(state["control"]["lr_scale"])) == 0.25
  assert checkpoint.Checkpointer(str(tmp_path / "checkpoints")).latest_step() == 6
  rows = metrics.read_jsonl(tmp_path / "metrics.jsonl")
  scales = [r["control/lr_scale"] for r in rows if "control/lr_scale" in r]
  assert scales == [1.0, 0.5, 0.25]
  lrs = [r["train/lr"] for r in rows if "train/lr" in r]
  assert lrs[-1] == pytest.approx(0.5 * lrs[1], rel=0.05), lrs  # steps 4-5 ran at scale 0.5 (set by the eval at 4)


class _EveryOtherClass:
  """A sampler: epochs list the examples sorted by label, rotated by the epoch (deterministic in (epoch, seed))."""

  def __init__(self, labels):
    self.order = np.argsort(labels, kind="stable")

  def __len__(self):
    return len(self.order)

  def indices(self, epoch, seed):
    return np.roll(self.order, epoch + seed)


def test_custom_train_order_is_followed():
  from common import data
  labels = np.array([3, 1, 2, 0, 1, 3, 0, 2], np.int32)
  src = data.ArraySource("ordered", label=labels, index=np.arange(8))
  order = _EveryOtherClass(labels)
  it = data.train_iterator(src, local_batch=4, order=order, seed=0)
  seen = np.concatenate([next(it)["index"] for _ in range(4)])
  np.testing.assert_array_equal(seen, np.concatenate([order.indices(0, 0), order.indices(1, 0)]))


def test_init_from_loads_batch_stats_too(tmp_path):
  from common import models
  import flax.linen as nn
  import jax.numpy as jnp

  class BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.BatchNorm(use_running_average=not train, name="bn")(nn.Dense(3, name="fc")(x))

  variables = BNNet().init(jax.random.key(0), jnp.ones((2, 4)))
  saved = jax.tree.map(lambda v: np.asarray(v) + 1.0, variables)
  from flax.core import unfreeze
  saved = unfreeze(saved)
  models.save(str(tmp_path / "m"), "ladeda9", {}, saved)  # any registered name: only the variables matter here
  ms = checkpoint.load_init_from_collections(jax.tree.map(np.asarray, {"batch_stats": variables["batch_stats"]}),
                                             str(tmp_path / "m"))
  np.testing.assert_array_equal(ms["batch_stats"]["bn"]["var"], saved["batch_stats"]["bn"]["var"])
  bad = {"batch_stats": {"bn": {"mean": np.zeros(5), "var": np.zeros(5)}}}
  with pytest.raises(tree.MismatchError, match="batch_stats"):
    checkpoint.load_init_from_collections(bad, str(tmp_path / "m"))


def test_predict_gathers_rows_in_source_order():
  from common import data
  values = np.arange(13, dtype=np.float32)
  src = data.ArraySource("vals", v=values)
  mesh = parallel.make_mesh()
  batches = data.eval_batches(src, global_batch=4, local_batch=4)
  out = trainer.predict(lambda state, b: {"twice": 2 * b["v"], "v": b["v"]}, {}, batches, mesh)
  np.testing.assert_array_equal(out["v"], values)  # padding dropped, order kept
  np.testing.assert_array_equal(out["twice"], 2 * values)
