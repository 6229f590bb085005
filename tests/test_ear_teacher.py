"""Ear VAE teacher end to end on synthetic ears (tiny smoke config, 2 fake CPU devices)."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from common import checkpoint, convert, metrics, models, trainer
from configs.ear_teacher import default
from ear_teacher import evaluate, model as model_lib, synthetic, train
from tests.conftest import REPO, set_dotted, subprocess_env


@pytest.fixture(scope="module")
def ear_data(tmp_path_factory):
  out = tmp_path_factory.mktemp("ears")
  synthetic.main(["--out", str(out), "--num_identities", "24", "--images_per_identity", "4",
                  "--val_identities", "6", "--size", "64", "--seed", "1"])
  return out


def smoke_config(ear_data, **overrides):
  c = default.get_config("smoke")
  c.train_npy, c.val_npy = str(ear_data / "train.npy"), str(ear_data / "val.npy")
  return set_dotted(c, **overrides)


def test_freeze_patterns():
  assert train.backbone_freeze_patterns(0, 12) == ("encoder/backbone/.*",)
  assert train.backbone_freeze_patterns(-1, 12) == ()
  pats = train.backbone_freeze_patterns(2, 4)
  from common import optim
  params = {"encoder": {"backbone": {"pos_embed": 0, "norm": {"scale": 0},
                                     **{f"blocks_{i}": {"w": 0} for i in range(4)}}, "head": {"w": 0}}}
  mask = optim.trainable_mask(params, pats)
  assert [k for k, v in mask.items() if v] == ["encoder/backbone/norm/scale", "encoder/backbone/blocks_2/w",
                                               "encoder/backbone/blocks_3/w", "encoder/head/w"]


def test_smoke_training_lowers_loss_evaluates_and_exports(ear_data, tmp_path, caplog):
  c = smoke_config(ear_data, total_steps=10, log_every_steps=2, eval_every_steps=5, ckpt_every_steps=5)
  train.train_and_evaluate(c, str(tmp_path))
  rows = metrics.read_jsonl(tmp_path / "metrics.jsonl")
  losses = [r["train/total"] for r in rows if "train/total" in r]
  assert losses[-1] < 0.9 * losses[0], losses
  evals = [r for r in rows if "val/psnr" in r]
  assert {"val/l1", "val/ssim", "val/edge", "val/kl", "val/contrastive", "val/total", "val/psnr",
          "val/ssim_index", "val/recon_spread_ratio"} <= set(evals[-1])
  assert "val/perceptual" not in evals[-1]  # no VGG configured: the term is off
  assert evals[-1]["val/psnr"] > evals[0]["val/psnr"]
  assert (tmp_path / "recon_latest.png").exists() and (tmp_path / "recon_step000010.png").exists()
  # the seed's health checks: a tiny fresh model's KL is far below the healthy 100-300 band
  assert any("too weak, may memorise" in r.getMessage() for r in caplog.records)
  assert any("DINOv2 backbone has RANDOM weights" in r.getMessage() for r in caplog.records)
  assert any("perceptual loss OFF" in r.getMessage() for r in caplog.records)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))

  report = evaluate.evaluate(str(tmp_path))
  assert set(report["features"]) == {"different_ears", "same_ear_aug", "similar_ears"}
  assert report["step"] == 10 and json.loads((tmp_path / "feature_report.json").read_text())["step"] == 10
  assert (tmp_path / "feature_similarity.png").exists()

  # The exported encoder is the best evaluated checkpoint's (lowest val/total) and reproduces its mu.
  module, variables = models.load("ear_teacher_encoder", str(tmp_path / "encoder_export"))
  x = np.random.default_rng(0).random((2, 56, 56, 3)).astype(np.float32)
  mu, _ = module.apply(variables, x)
  full = model_lib.from_config(c.model)
  best = min(evals, key=lambda r: r["val/total"])["step"]
  params, step = checkpoint.load_trained_params(str(tmp_path), checkpoint.best_step(str(tmp_path), "val/total", "min"))
  assert step == best
  mu_ref = full.apply({"params": params}, x, method=full.encode)[0]
  np.testing.assert_allclose(mu, mu_ref, atol=1e-5)


def test_resume_mid_run_equals_uninterrupted(ear_data, tmp_path):
  full_cfg = smoke_config(ear_data, total_steps=4, eval_every_steps=100, ckpt_every_steps=100, keep_best=0)
  task, _, _, _ = train.make_task(full_cfg, str(tmp_path / "full"))
  task.eval_fn = None
  full = trainer.train(full_cfg, str(tmp_path / "full"), task)

  split_cfg = smoke_config(ear_data, total_steps=4, eval_every_steps=1, ckpt_every_steps=100, keep_best=0)
  task, _, _, _ = train.make_task(split_cfg, str(tmp_path / "split"))
  task.eval_fn = lambda state, step: (os.kill(os.getpid(), signal.SIGTERM) if step == 2 else None) or {}
  with pytest.raises(trainer.Preempted):
    trainer.train(split_cfg, str(tmp_path / "split"), task)
  task.eval_fn = None
  resumed = trainer.train(split_cfg, str(tmp_path / "split"), task)
  for a, b in zip(jax.tree.leaves(jax.device_get(full["params"])), jax.tree.leaves(jax.device_get(resumed["params"]))):
    np.testing.assert_array_equal(a, b)


def test_init_from_converted_dinov2_and_frozen_backbone(ear_data, tmp_path):
  torch = pytest.importorskip("torch")
  # A 1-block ViT-S/14 in the official hub layout, as torch.save writes it.
  abstract = models.abstract_variables(models.get("dinov2_vits14"), {"depth": 1})
  rng = np.random.default_rng(0)
  flat = convert.flatten(abstract["params"])
  hub = {}
  for path, leaf in flat.items():
    value = rng.normal(0, 0.02, leaf.shape).astype(np.float32)
    key = path.replace("blocks_", "blocks.").replace("/", ".").replace("kernel", "weight").replace("scale", "weight")
    key = key.replace("patch_embed.", "patch_embed.proj.")
    if path.endswith("kernel"):
      value_t = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    else:
      value_t = value
    hub[key] = torch.from_numpy(np.ascontiguousarray(value_t))
  torch.save({"model": {f"teacher.backbone.{k}": v for k, v in hub.items()}}, tmp_path / "dino.pth")
  convert.convert_file("dinov2_vits14", str(tmp_path / "dino.pth"), str(tmp_path / "dino"), {"depth": 1})
  _, converted = models.load(str(tmp_path / "dino"))

  c = smoke_config(ear_data, total_steps=2, eval_every_steps=100, ckpt_every_steps=100)
  c.init_from.path = str(tmp_path / "dino")
  c.backbone_trainable_blocks = 0
  task, _, _, _ = train.make_task(c, str(tmp_path / "run"))
  task.eval_fn = None
  state = trainer.train(c, str(tmp_path / "run"), task)
  got = jax.device_get(state["params"]["encoder"]["backbone"])
  for (k, a), b in zip(convert.flatten(got).items(), convert.flatten(converted["params"]).values()):
    np.testing.assert_array_equal(a, b, err_msg=k)  # loaded, and frozen: unchanged by training


def test_cli_bad_inputs_are_one_line_errors(ear_data, tmp_path):
  def run(*args):
    return subprocess.run([sys.executable, "-m", "ear_teacher.main", "--config", "configs/ear_teacher/default.py:smoke",
                           "--workdir", str(tmp_path / "w"), *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
  r = run()
  assert r.returncode == 2 and "error: set --config.train_npy" in r.stderr
  bad = tmp_path / "bad.npy"
  np.save(bad, np.zeros((4, 8), np.uint8))
  r = run(f"--config.train_npy={bad}", f"--config.val_npy={bad}")
  assert r.returncode == 2 and "bad.npy" in r.stderr and r.stderr.strip().splitlines()[-1].startswith("error:")
  r = run(f"--config.train_npy={ear_data / 'train.npy'}", f"--config.val_npy={ear_data / 'val.npy'}",
          "--config.image_size=60")
  assert r.returncode == 2 and "multiple of" in r.stderr
  assert not (tmp_path / "w" / "checkpoints").exists() or not os.listdir(tmp_path / "w" / "checkpoints")
