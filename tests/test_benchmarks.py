"""benchmarks.run end to end on CPU, on shrunk models (1-block DINOv2s via the hidden --depth, small LaDeDas, 1-block
EdgeFace / DSR) so that it stays fast."""

import argparse
import json

import jax
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from benchmarks import run, torch_facerec, workloads
from common import convert
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
                         "precision": "highest", "dtype": "float32", "overrides": {"depth": 1}}
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


def _bench_record(tmp_path, wl, overrides, warmup=1):
  """run.bench directly, batch 2, 1 repeat: shrinkers other than --depth have no CLI flag. Returns the JSON record."""
  opts = argparse.Namespace(device="cpu", repeats=1, warmup=warmup, precision="highest")
  device = jax.devices("cpu")[0]
  with jax.default_device(device):
    record = run.bench(wl, None, 2, opts, device, overrides)
  out = tmp_path / "bench.json"
  out.write_text(json.dumps(record))
  return json.loads(out.read_text())


def test_ear_vae_train_both_frameworks(tmp_path):
  overrides = {"depth": 1, "image_size": 56, "decoder_channels": (64, 32, 16)}
  r = _bench_record(tmp_path, workloads.get("ear_vae_train"), overrides)
  assert r["workload"] == "ear_vae_train" and r["config"]["batch"] == 2
  for fw in ("jax", "torch"):
    assert r[fw]["compile_s"] > 0 and len(r[fw]["step_s"]["all"]) == 1 and r[fw]["images_per_s"] > 0
  assert r["jax"]["flops_per_step"] > 0
  assert r["jax_over_torch_images_per_s"] == pytest.approx(r["jax"]["images_per_s"] / r["torch"]["images_per_s"])


# LaDeDa workloads on a 1-block-per-stage, 8-wide LaDeDa9 and 32 px images. Both frameworks get the same weights and
# inputs, so their outputs must agree to 1e-5 of the output's scale (measured on CPU: forward <= 8e-7, loss <= 3e-7).
# Forward: logit and patch map; train: the first step's loss (train-mode forward + loss, before any update).
_LADEDA_SMALL = {"width": 8, "depth": 1, "image_size": 32}
_LADEDA_CASES = [("ladeda_forward", _LADEDA_SMALL), ("ladeda_train", _LADEDA_SMALL),
                 ("tiny_ladeda_forward", {"image_size": 32}), ("tiny_ladeda_distill_train", _LADEDA_SMALL)]


@pytest.mark.parametrize("name,overrides", _LADEDA_CASES)
def test_ladeda_workloads_same_function_and_record(tmp_path, name, overrides):
  wl = workloads.get(name)
  device = jax.devices("cpu")[0]
  jax_fn, jax_args = wl.make_jax(2, device, None, **overrides)
  torch_fn, torch_args = wl.make_torch(2, torch.device("cpu"), None, **overrides)
  got, want = jax_fn(*jax_args), torch_fn(*torch_args)
  pairs = [(got[1], want[1])] if wl.stateful else list(zip(got, want))  # train: (state, loss); forward: (logit, map)
  for g, w in pairs:
    w = w.detach().numpy()
    assert g.shape == w.shape
    np.testing.assert_allclose(g, w, atol=1e-5 * np.abs(w).max(), rtol=0)
  r = _bench_record(tmp_path, wl, overrides, warmup=0)
  assert r["workload"] == name and r["config"]["batch"] == 2 and r["config"]["overrides"] == overrides
  for fw in ("jax", "torch"):
    assert r[fw]["compile_s"] > 0 and len(r[fw]["step_s"]["all"]) == 1 and r[fw]["images_per_s"] > 0


def test_adaptive_avg_pool_matches_torch():
  x = np.random.default_rng(0).normal(size=(2, 110, 110)).astype(np.float32)
  for out_hw in ((27, 27), (5, 7), (110, 110), (1, 1)):
    want = F.adaptive_avg_pool2d(torch.from_numpy(x)[:, None], out_hw)[:, 0].numpy()
    np.testing.assert_allclose(workloads.adaptive_avg_pool(x, out_hw), want, rtol=1e-5, atol=1e-6)
  small = x[:, :3, :4]  # upsampling: overlapping windows of one or two cells
  np.testing.assert_allclose(workloads.adaptive_avg_pool(small, (5, 7)),
                             F.adaptive_avg_pool2d(torch.from_numpy(small)[:, None], (5, 7))[:, 0].numpy(), rtol=1e-6)


# facerec workloads at their real input sizes (112 px faces, 16 px VLR) with one block per EdgeFace stage and one DSR
# residual block (the runner's --depth 1). Both frameworks get the same weights and inputs, so the outputs agree to
# 1e-5 of their scale (measured on CPU: embeddings <= 6.4e-7, DSR 7.1e-7, first-step loss 8e-8; all <= 8.1e-7 at full
# depth, batch 2-8). Compiled without XLA's optimisation passes: the depth-1 train step takes ~15 s of CPU to compile
# with them, ~7 s without. The runner's compile, the second of each, is a persistent-cache hit (tests/conftest.py).
_FACEREC_BATCH = 2  # the train step's 2 HR + 2 DSR embeddings are one subject: test_torch_supcon covers negatives


@pytest.fixture
def fast_compile():
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


@pytest.mark.usefixtures("fast_compile")
@pytest.mark.parametrize("name,variant", [("edgeface_embed", "xs"), ("dsr_forward", None),
                                          ("facerec_contrastive_train", None)])
def test_facerec_workloads_same_function(name, variant):
  wl = workloads.get(name)
  jax_fn, jax_args = wl.make_jax(_FACEREC_BATCH, jax.devices("cpu")[0], variant, depth=1)
  torch_fn, torch_args = wl.make_torch(_FACEREC_BATCH, torch.device("cpu"), variant, depth=1)
  got, want = jax_fn(*jax_args), torch_fn(*torch_args)
  if wl.stateful:  # train: (state, loss), the first step's loss (before any update)
    got, want = got[1], want[1]
  want = want.detach().numpy()
  want = want.transpose(0, 2, 3, 1) if want.ndim == 4 else want  # DSR: torch NCHW
  assert got.shape == want.shape and np.isfinite(want).all() and np.abs(want).max() > 0.1
  np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0)


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


@pytest.mark.usefixtures("fast_compile")
@pytest.mark.parametrize("name", ["edgeface_embed", "dsr_forward", "facerec_contrastive_train"])
def test_facerec_workloads_record(tmp_path, name):
  out = tmp_path / "bench.json"
  run.main([name, "--device", "cpu", "--repeats", "1", "--warmup", "0", "--depth", "1", "--batch", str(_FACEREC_BATCH),
            "--out", str(out)])
  r = json.loads(out.read_text())
  assert r["workload"] == name and r["config"]["batch"] == _FACEREC_BATCH and r["config"]["overrides"] == {"depth": 1}
  assert r["variant"] == workloads.get(name).default_variant  # edgeface_embed: xs
  for fw in ("jax", "torch"):
    assert r[fw]["compile_s"] > 0 and len(r[fw]["step_s"]["all"]) == 1 and r[fw]["images_per_s"] > 0
  assert r["jax_over_torch_images_per_s"] == pytest.approx(r["jax"]["images_per_s"] / r["torch"]["images_per_s"])


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
