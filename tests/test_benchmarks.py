"""benchmarks.run end to end on CPU, on shrunk models (1-block DINOv2s via the hidden --depth, small LaDeDas, 1-block
EdgeFace / DSR) so that it stays fast; the train workloads time the trainers' own steps."""

import argparse
import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
import torch

from benchmarks import run, torch_facerec, workloads
from common import convert, trainer
from facerec import losses as facerec_losses
from facerec import models as facerec_models


def _run(tmp_path, *args):
  out = tmp_path / "bench.json"
  run.main(["dinov2_forward", "--device", "cpu", "--repeats", "2", "--warmup", "1", "--depth", "1", *args,
            "--out", str(out)])
  return json.loads(out.read_text())


def _check_framework(r, images):
  assert r["compile_s"] > 0 and r["peak_memory_bytes"] >= 0 and r["peak_memory_method"]
  s = r["step_s"]
  assert len(s["all"]) == 2 and 0 < s["min"] <= s["p10"] <= s["median"] <= s["p90"] <= s["max"]
  assert r["images_per_s"] == pytest.approx(images / s["median"])
  assert r["mfu"] is None  # CPU: no peak-FLOPs figure


def test_single_variant_record(tmp_path):
  r = _run(tmp_path, "--variant", "s14_224", "--batch", "1")
  assert (r["workload"], r["variant"]) == ("dinov2_forward", "s14_224")
  assert r["config"] == {"device": "cpu", "batch": 1, "images_per_step": 1, "repeats": 2, "warmup": 1,
                         "precision": "highest", "dtype": "float32", "torch_autocast": None,
                         "overrides": {"depth": 1}}
  assert r["jax"]["hlo_has_bf16"] is False
  for fw in ("jax", "torch"):
    _check_framework(r[fw], 1)
  assert r["jax"]["lower_s"] < r["jax"]["compile_s"]
  assert r["jax"]["flops_per_step"] > 1e9  # one ViT-S block on 257 tokens plus the patch embedding: ~1.2 GFLOP
  assert r["jax_over_torch_images_per_s"] == pytest.approx(r["jax"]["images_per_s"] / r["torch"]["images_per_s"])
  assert r["peak_flops_per_s"] is None and set(r["definitions"]) >= {"compile_s", "step_s", "mfu"}
  env = r["environment"]
  assert env["versions"]["jax"] == jax.__version__ and env["device_kind"] == "cpu"
  assert env["cpu_count"] >= 1 and env["torch_num_threads"] >= 1


def test_variant_list_with_batch_per_variant(tmp_path):
  records = _run(tmp_path, "--variant", "s14_224,b14_224", "--batch", "1,2")
  assert [(r["variant"], r["config"]["batch"]) for r in records] == [("s14_224", 1), ("b14_224", 2)]
  assert records[1]["jax"]["flops_per_step"] > 3 * records[0]["jax"]["flops_per_step"]  # 2x batch, ~3.5x per image


def test_gpu_request_without_gpu_fails_in_one_line(tmp_path, capsys):
  if any(d.platform == "gpu" for d in jax.devices()):
    pytest.skip("a GPU is present")
  with pytest.raises(SystemExit) as e:
    run.main(["dinov2_forward", "--device", "gpu", "--out", str(tmp_path / "x.json")])
  assert e.value.code != 0 and "no GPU" in str(e.value.code) and "\n" not in str(e.value.code)
  assert not (tmp_path / "x.json").exists()


def test_bad_variant_is_a_usage_error(tmp_path):
  with pytest.raises(SystemExit) as e:
    run.main(["dinov2_forward", "--variant", "l14_224", "--out", str(tmp_path / "x.json")])
  assert e.value.code == 2


def _bench_record(tmp_path, wl, overrides, warmup=1, dtype="float32"):
  """run.bench directly, batch 2, 1 repeat: shrinkers other than --depth have no CLI flag. Returns the JSON record."""
  opts = argparse.Namespace(device="cpu", repeats=1, warmup=warmup, precision="highest", dtype=dtype)
  device = jax.devices("cpu")[0]
  with jax.default_device(device):
    record = run.bench(wl, None, 2, opts, device, overrides)
  out = tmp_path / "bench.json"
  out.write_text(json.dumps(record))
  return json.loads(out.read_text())


def _check_record(r, name, batch, overrides):
  assert r["workload"] == name and r["config"]["batch"] == batch and r["config"]["overrides"] == overrides
  for fw in ("jax", "torch"):
    assert r[fw]["compile_s"] > 0 and len(r[fw]["step_s"]["all"]) == 1 and r[fw]["images_per_s"] > 0
  assert r["jax_over_torch_images_per_s"] == pytest.approx(r["jax"]["images_per_s"] / r["torch"]["images_per_s"])


def _first_calls(wl):
  """(`wl` whose factories call `fn` before handing (fn, args) to the runner, calls): calls[fw] = (fn, args, outputs)
  of the first call, or of the first two steps of a train step (the second step's loss shows the first update:
  optimizer, learning rate, frozen parameters). The runner times the calls after them, so one set-up serves both the
  parity check and the record."""
  calls = {}

  def first_calls(fw, factory):
    def make(*args, **kwargs):
      fn, fn_args = factory(*args, **kwargs)
      outs = [fn(*fn_args)]
      if wl.stateful:
        outs.append(fn(outs[0][0], *fn_args[1:]))
      calls[fw] = (fn, fn_args, outs)
      return fn, ((outs[-1][0], *fn_args[1:]) if wl.stateful else fn_args)
    return make

  return dataclasses.replace(wl, make_jax=first_calls("jax", wl.make_jax),
                             make_torch=first_calls("torch", wl.make_torch)), calls


def _first_outputs(wl, calls) -> list:
  """(JAX, torch numpy) output pairs of the first calls: forward (logit, map) or the one array (NHWC); train the
  losses of the first two steps (JAX: the trainer's metrics["loss"])."""
  got, want = calls["jax"][2], calls["torch"][2]
  if wl.stateful:
    pairs = [(g[1]["loss"], w[1]) for g, w in zip(got, want)]
  else:
    pairs = list(zip(got[0], want[0])) if isinstance(got[0], tuple) else [(got[0], want[0])]
  return [(g, w.detach().numpy().transpose(0, 2, 3, 1) if w.ndim == 4 else w.detach().numpy()) for g, w in pairs]


# The subsystem builder each train workload must take its Task from: the benchmark times that task's step as
# trainer.build jits it, so a step re-written for the benchmark (or a task of its own) fails these checks.
_TRAINERS = {"ear_vae_train": ("ear_teacher.train", "make_task"), "ladeda_train": ("distill.train", "teacher_task"),
             "tiny_ladeda_distill_train": ("distill.train", "student_task"),
             "facerec_contrastive_train": ("facerec.train", "finetune_task")}


@pytest.fixture
def builds(monkeypatch):
  """(task, Built) of every common.trainer.build call during the test."""
  made, build = [], trainer.build

  def spy(config, task, mesh=None):
    made.append((task, build(config, task, mesh)))
    return made[-1][1]

  monkeypatch.setattr(trainer, "build", spy)
  return made


def _check_trainer_step(name, builds, calls):
  """The JAX `fn` of train workload `name` is the trainer's own step, built once from the subsystem's own Task, and
  its args are that build's state, global batch, rng and constants."""
  [(task, built)] = builds
  module, builder = _TRAINERS[name]
  assert (task.loss_fn.__module__, task.loss_fn.__qualname__) == (module, f"{builder}.<locals>.loss_fn")
  fn, (state, batch, rng, constants), _ = calls["jax"]
  assert fn is built.train_step  # the very jitted, donated object trainer.train calls
  assert rng is built.train_rng and constants is built.constants
  assert jax.tree.structure(state) == jax.tree.structure(built.abstract_state)
  assert built.mesh.devices.size == 1 and all(x.sharding.mesh == built.mesh for x in jax.tree.leaves(batch))


def test_ear_vae_train_both_frameworks(tmp_path, builds):
  overrides = {"depth": 1, "image_size": 56, "decoder_channels": [64, 32, 16]}  # as JSON has it
  wl, calls = _first_calls(workloads.get("ear_vae_train"))
  r = _bench_record(tmp_path, wl, overrides)
  _check_trainer_step("ear_vae_train", builds, calls)
  _check_record(r, "ear_vae_train", 2, overrides)
  assert r["jax"]["flops_per_step"] > 0


# LaDeDa workloads on a 1-block-per-stage, 8-wide LaDeDa9 and 32 px images. Both frameworks get the same weights and
# inputs, so their outputs must agree to 1e-5 of the output's scale (measured on CPU: forward <= 7e-7, losses <= 2e-7,
# where one update moves the loss by 2e-3 (distillation) to 2e-2 (fine-tuning)). Forward: logit and patch map; train:
# the losses of the first two steps (train-mode forward + loss before any update, then after one).
_LADEDA_SMALL = {"width": 8, "depth": 1, "image_size": 32}
_LADEDA_CASES = [("ladeda_forward", _LADEDA_SMALL), ("ladeda_train", _LADEDA_SMALL),
                 ("tiny_ladeda_forward", {"image_size": 32}), ("tiny_ladeda_distill_train", _LADEDA_SMALL)]


@pytest.mark.parametrize("name,overrides", _LADEDA_CASES)
def test_ladeda_workloads_same_function_and_record(tmp_path, builds, name, overrides):
  wl, calls = _first_calls(workloads.get(name))
  r = _bench_record(tmp_path, wl, overrides, warmup=0)
  for g, w in _first_outputs(wl, calls):
    assert g.shape == w.shape
    np.testing.assert_allclose(g, w, atol=1e-5 * np.abs(w).max(), rtol=0)
  if wl.stateful:
    _check_trainer_step(name, builds, calls)
  if name == "ladeda_train":  # the torch twin trains what the trainer's mask does (teacher.unfreeze_blocks 1)
    mask = builds[0][1].mask
    model = calls["torch"][1][0]
    assert sum(p.requires_grad for p in model.parameters()) == sum(mask.values()) < len(mask)
  _check_record(r, name, 2, overrides)


# facerec workloads at their real input sizes (112 px faces, 16 px VLR) with one block per EdgeFace stage and one DSR
# residual block (the runner's --depth 1), through the command line. Both frameworks get the same weights and inputs,
# so the outputs agree to 1e-5 of their scale (measured on CPU: embeddings 6.5e-7, DSR 5.7e-7, the train step's first
# two losses <= 4e-7, where one update moves it by 8e-2). Compiled without XLA's optimisation passes, which cost the
# train step more compile time than they save. The runner's compile, the second of each, is a persistent-cache hit
# (tests/conftest.py).
_FACEREC_BATCH = 2  # the train step's 2 HR + 2 DSR embeddings are one subject: test_torch_supcon covers negatives


@pytest.fixture
def fast_compile():
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


@pytest.mark.usefixtures("fast_compile")
@pytest.mark.parametrize("name", ["edgeface_embed", "dsr_forward", "facerec_contrastive_train"])
def test_facerec_workloads_same_function_and_record(tmp_path, monkeypatch, builds, name):
  wl, calls = _first_calls(workloads.get(name))
  monkeypatch.setattr(workloads, "get", lambda _: wl)  # what run.main times
  out = tmp_path / "bench.json"
  run.main([name, "--device", "cpu", "--repeats", "1", "--warmup", "0", "--depth", "1", "--batch", str(_FACEREC_BATCH),
            "--out", str(out)])
  r = json.loads(out.read_text())
  _check_record(r, name, _FACEREC_BATCH, {"depth": 1})
  assert r["variant"] == wl.default_variant  # edgeface_embed: xs
  for got, want in _first_outputs(wl, calls):
    assert got.shape == want.shape and np.isfinite(want).all() and np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0)
  if wl.stateful:
    _check_trainer_step(name, builds, calls)


def test_edgeface_embed_s_same_weights_and_inputs():
  """Variant s runs xs's code on other shapes (tests/test_edgeface.py checks its parity): the torch model loads, and
  its state dict converts back to, exactly the JAX variables; the inputs are equal."""
  wl = workloads.get("edgeface_embed")
  _, (variables, images) = wl.make_jax(_FACEREC_BATCH, jax.devices("cpu")[0], "s", depth=1)
  _, (model, pixels) = wl.make_torch(_FACEREC_BATCH, torch.device("cpu"), "s", depth=1)
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  again = convert.convert_state_dict(sd, facerec_models.CONVERTER, convert.flatten(jax.eval_shape(lambda: variables)))
  assert convert.flatten(variables)["params/stages_3/blocks_0/xca/temperature"].shape == (8, 1, 1)  # s: 8 heads
  jax.tree.map(np.testing.assert_array_equal, again, variables)
  np.testing.assert_array_equal(pixels.permute(0, 2, 3, 1).numpy(), images)


def test_torch_supcon_matches_jax():
  """benchmarks.torch_facerec.supcon_loss (the torch train step's loss) against facerec.losses, with negatives and
  with anchors that have no positive (left out of the mean)."""
  rng = np.random.default_rng(0)
  sr, hr = rng.normal(size=(2, 8, 16)).astype(np.float32)
  labels = np.array([0, 0, 1, 1, 1, 2, 3, 3])
  want = jax.jit(facerec_losses.cross_resolution_infonce)(sr, hr, labels)  # temperature 0.07
  got = torch_facerec.supcon_loss(torch.from_numpy(np.concatenate([sr, hr])), torch.from_numpy(np.tile(labels, 2)),
                                  0.07, 0.07)
  np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
  want = jax.jit(facerec_losses.supcon_loss)(sr, labels, 0.1, 0.07)  # label 2: no positive
  got = torch_facerec.supcon_loss(torch.from_numpy(sr), torch.from_numpy(labels), 0.1, 0.07)
  np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)


def test_pipeline_benchmark_reports_host_rate_device_demand_and_headroom(tmp_path):
  """`python -m benchmarks.run pipelines`: per trainer, host images/s of its own pipeline, H100 demand from XLA's
  cost analysis of its own train step, and headroom = 16 x per-core rate / demand (smoke configs here)."""
  from benchmarks import run  # pylint: disable=import-outside-toplevel
  out = tmp_path / "pipelines.json"
  run.main(["pipelines", "--smoke", "--workers", "0", "--batches", "2", "--data_dir", str(tmp_path / "data"),
            "--out", str(out)])
  report = json.loads(out.read_text())
  rows = {r["pipeline"]: r for r in report["pipelines"]}
  assert set(rows) == {"ear_teacher", "distill_teacher", "distill_student", "facerec_dsr", "facerec_finetune"}
  for r in rows.values():
    assert r["host_images_per_s_1_core"] > 0 and r["gflop_per_image"] > 0
    assert r["h100_demand_images_per_s"] == pytest.approx(0.4 * 989e12 / (r["gflop_per_image"] * 1e9))
    assert r["headroom_16_cores"] == pytest.approx(16 * r["host_images_per_s_1_core"] / r["h100_demand_images_per_s"])
  # The student step runs the teacher forward too: more FLOPs per image than the student alone would cost.
  assert rows["distill_student"]["gflop_per_image"] < rows["distill_teacher"]["gflop_per_image"]
  assert "extrapolation" in report["note"]


# --- --dtype bfloat16 and the GPU suite (benchmarks/gpu_suite.sh, benchmarks/gpu_table.py) ----------------------

def _check_bf16(r, name, batch):
  assert r["workload"] == name and r["config"]["batch"] == batch
  assert r["config"]["dtype"] == "bfloat16" and r["config"]["torch_autocast"] == "bfloat16"
  assert r["jax"]["hlo_has_bf16"]  # the dtype reached the compiled step
  for fw in ("jax", "torch"):
    assert all(np.isfinite(t) and t > 0 for t in r[fw]["step_s"]["all"]) and r[fw]["images_per_s"] > 0
  assert r["jax_over_torch_images_per_s"] > 0


def test_bf16_forward_from_the_command_line(tmp_path):
  out = tmp_path / "bench.json"
  run.main(["tiny_ladeda_forward", "--device", "cpu", "--dtype", "bfloat16", "--batch", "2", "--repeats", "2",
            "--warmup", "1", "--out", str(out)])
  _check_bf16(json.loads(out.read_text()), "tiny_ladeda_forward", 2)


def test_bf16_train_step_computes_in_bf16_in_both_frameworks(tmp_path):
  """The distillation step: the student from its config, the teacher loaded from a model directory (the path a
  dtype is easiest to lose on); torch under autocast."""
  wl, calls = _first_calls(workloads.get("tiny_ladeda_distill_train"))
  r = _bench_record(tmp_path, wl, _LADEDA_SMALL, warmup=0, dtype="bfloat16")
  _check_bf16(r, "tiny_ladeda_distill_train", 2)
  # Every conv of teacher and student in bf16 but the student's fixed float32 preprocessing (right_diag): a teacher
  # that lost the dtype on its way through the model directory would add its 18 float32 convs.
  fn, args, _ = calls["jax"]
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), args)  # donated
  convs = re.findall(r"stablehlo.convolution.*?-> tensor<\S*x(bf16|f32)>", fn.lower(*shapes).as_text())
  assert convs.count("f32") == 1 and convs.count("bf16") > 20
  # The first two steps' losses: both frameworks round the same network to bf16, each in its own places (measured
  # on CPU: 4e-5 apart, float32 1e-7).
  for got, want in _first_outputs(wl, calls):
    assert np.isfinite(got) and float(got) == pytest.approx(float(want), rel=1e-3)


def test_mfu_uses_the_peak_of_the_run_dtype(monkeypatch):
  """On an H100 a float32 run (--precision highest) is taken against the fp32 peak, a bfloat16 one against bf16."""
  fake = {"compile_s": 1.0, "step_s": {"median": 0.5}, "images_per_s": 4.0, "flops_per_step": 1e13}
  monkeypatch.setattr(run, "_time_jax", lambda *a: dict(fake))
  monkeypatch.setattr(run, "_environment", lambda device: {})  # it asks torch for the CUDA device's name
  device = types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3", platform="gpu")
  for dtype, peak in (("float32", 67e12), ("bfloat16", 989e12)):
    opts = argparse.Namespace(device="gpu", repeats=1, warmup=0, precision="highest", dtype=dtype)
    r = run.bench(workloads.get("dsr_forward"), None, 2, opts, device, {})
    assert r["config"]["dtype"] == dtype and r["peak_flops_per_s"] == peak
    assert r["jax"]["mfu"] == pytest.approx(1e13 / 0.5 / peak)


def test_a_failing_framework_is_recorded_and_the_other_still_runs(tmp_path, monkeypatch):
  def boom(*args, **kwargs):
    raise RuntimeError("out of memory (simulated)")

  wl = dataclasses.replace(workloads.get("tiny_ladeda_forward"), make_torch=boom)
  monkeypatch.setattr(workloads, "get", lambda _: wl)
  out = tmp_path / "bench.json"
  with pytest.raises(SystemExit) as e:
    run.main(["tiny_ladeda_forward", "--device", "cpu", "--batch", "1", "--repeats", "1", "--warmup", "0",
              "--out", str(out)])
  assert "torch failed" in str(e.value.code)
  r = json.loads(out.read_text())
  assert r["jax"]["images_per_s"] > 0 and r["torch"] == {"failed": "RuntimeError: out of memory (simulated)"}
  assert r["jax_over_torch_images_per_s"] is None


def test_gpu_table_merges_records_and_failures(tmp_path):
  from benchmarks import gpu_table  # pylint: disable=import-outside-toplevel

  def record(dtype, jax_ips, torch_part):
    fw = lambda ips, mfu: {"compile_s": 2.5, "step_s": {"median": 8 / ips}, "images_per_s": ips, "mfu": mfu,
                            "peak_memory_bytes": 3 * 2 ** 30}
    torch = fw(*torch_part) if isinstance(torch_part, tuple) else {"skipped": torch_part}
    return {"workload": "dsr_forward", "variant": None, "config": {"dtype": dtype, "batch": 8, "precision": "highest"},
            "jax": {**fw(jax_ips, 0.25), "hlo_has_bf16": dtype == "bfloat16"}, "torch": torch,
            "jax_over_torch_images_per_s": jax_ips / torch_part[0] if isinstance(torch_part, tuple) else None,
            "environment": {"device_kind": "NVIDIA H100 80GB HBM3"}}

  (tmp_path / "dsr_forward_bfloat16.json").write_text(json.dumps(record("bfloat16", 400.0, "torch is not installed")))
  (tmp_path / "dsr_forward_float32.json").write_text(json.dumps(record("float32", 200.0, (100.0, 0.125))))
  log = tmp_path / "ear.log"
  log.write_text("compiling\njaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory\nbye\n")
  gpu_table.main(["--failure", str(tmp_path / "ear_vae_train_bfloat16.json"), "--workload", "ear_vae_train",
                  "--dtype", "bfloat16", "--batch", "32", "--reason", "exit 1", "--log", str(log)])
  gpu_table.main([str(tmp_path)])

  md = (tmp_path / "gpu_suite.md").read_text().splitlines()
  assert md[0] == "# GPU suite: JAX vs PyTorch on NVIDIA H100 80GB HBM3"
  header = [c.strip() for c in md[2].strip("|").split("|")]
  assert header == ["workload", "dtype", "batch", "JAX img/s", "torch img/s", "JAX/torch", "JAX MFU", "torch MFU",
                    "JAX peak memory", "torch peak memory", "JAX compile s", "torch 1st call s"]
  rows = [[c.strip() for c in line.strip("|").split("|")] for line in md[4:7]]
  assert [r[:3] for r in rows] == [["dsr_forward", "float32", "8"], ["dsr_forward", "bfloat16", "8"],
                                   ["ear_vae_train", "bfloat16", "32"]]
  assert rows[0][3:] == ["200.0", "100.0", "2.00", "25.0 %", "12.5 %", "3.00 GiB", "3.00 GiB", "2.5", "2.5"]
  assert rows[1][4] == "skipped" and rows[1][5] == "–"
  assert rows[2][3].startswith("**failed**: exit 1") and "RESOURCE_EXHAUSTED" in rows[2][3]
  assert any("torch skipped: torch is not installed" in line for line in md)

  suite = json.loads((tmp_path / "gpu_suite.json").read_text())
  assert suite["failed"] == 1 and suite["device_kinds"] == ["NVIDIA H100 80GB HBM3"]
  assert [(r["workload"], r["dtype"], r["status"]) for r in suite["rows"]] == [
      ("dsr_forward", "float32", "ok"), ("dsr_forward", "bfloat16", "ok"), ("ear_vae_train", "bfloat16", "failed")]
  assert set(suite["records"]) == {"dsr_forward_float32.json", "dsr_forward_bfloat16.json",
                                   "ear_vae_train_bfloat16.json"}


_SUITE = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_suite.sh"


def test_gpu_suite_script_parses_and_runs_every_workload():
  subprocess.run(["bash", "-n", str(_SUITE)], check=True)
  table = re.search(r"^WORKLOADS=\(\n(.*?)^\)", _SUITE.read_text(), re.S | re.M).group(1)
  rows = [line.strip().strip('"').split() for line in table.splitlines() if line.strip()]
  assert sorted(name for name, _, _ in rows) == workloads.names()
  assert all(int(batch) > 0 and int(budget) > 0 for _, batch, budget in rows)
  usage = subprocess.run(["bash", str(_SUITE)], capture_output=True, text=True)
  assert usage.returncode == 2 and "usage" in usage.stderr


def test_gpu_suite_end_to_end_on_cpu(tmp_path):
  """The script itself, on one tiny workload in both dtypes (its CPU dry-run knobs): per-run JSONs, logs, the table."""
  env = {**os.environ, "PYTHON": sys.executable, "ONLY": "tiny_ladeda_forward", "WHEEL_DIR": str(tmp_path / "none"),
         "EXTRA_ARGS": "--device cpu --batch 2 --repeats 1 --warmup 0"}
  out = tmp_path / "suite"
  subprocess.run(["bash", str(_SUITE), str(out)], env=env, check=True, capture_output=True, timeout=240)
  for dtype in ("float32", "bfloat16"):
    r = json.loads((out / f"tiny_ladeda_forward_{dtype}.json").read_text())
    assert r["config"]["dtype"] == dtype and r["config"]["precision"] == ("highest" if dtype == "float32" else "default")
    assert "jax set-up" in (out / "logs" / f"tiny_ladeda_forward_{dtype}.log").read_text()
  md = (out / "gpu_suite.md").read_text()
  assert "| tiny_ladeda_forward | float32 | 2 |" in md and "| tiny_ladeda_forward | bfloat16 | 2 |" in md
  assert json.loads((out / "gpu_suite.json").read_text())["failed"] == 0
