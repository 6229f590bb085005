"""The VLR face workflow of spec 004 end to end on synthetic faces (smoke configs, 2 fake CPU devices).

One data set (8 subjects: 8 train / 6 val images each, 4 new test subjects) serves the module, with three
training runs made once: contrastive fine-tuning of a random EdgeFace (the recogniser the evaluation commands
then measure), DSR training behind a frozen random EdgeFace, and a short ArcFace fine-tuning. The evaluation
and diagnostic commands run in-process on their exports; the command line is checked for bad data only.
"""

import importlib
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from common import data as common_data, metrics as metrics_lib, models, trainer
from facerec import data, dsr as dsr_lib, evaluate, synthetic, train
from tests.conftest import REPO, subprocess_env

FINETUNE = importlib.import_module("configs.facerec.finetune")
DSR = importlib.import_module("configs.facerec.dsr")
SUBJECTS, VAL_IMAGES = 8, 6
PIPELINES = {"sr", "direct", "hr"}


@pytest.fixture(scope="module", autouse=True)
def fast_compiles():
  """XLA's optimisation passes cost far more compile time than they save on these few tiny steps."""
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
  root = tmp_path_factory.mktemp("faces") / "data"
  synthetic.write_dataset(str(root), subjects=SUBJECTS, images=8, test_subjects=4, eval_images=VAL_IMAGES, seed=0)
  return root


def config(module, arg: str, faces, **overrides):
  """A facerec config from `module.get_config(arg)` on `faces`, random models, dotted-key overrides set."""
  c = module.get_config(arg)
  c.data.train_root, c.data.val_root = str(faces / "train"), str(faces / "val")
  c.edgeface.weights = c.dsr.weights = "random"
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def rows(workdir, key: str) -> list[dict]:
  return [r for r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if key in r]


def copy_faces(dst, pick: dict) -> str:
  """A face root at `dst` holding {subject folder: [image paths]} (copies)."""
  for subject, paths in pick.items():
    os.makedirs(os.path.join(dst, subject))
    for p in paths:
      shutil.copy(p, os.path.join(dst, subject, os.path.basename(p)))
  return str(dst)


# ----------------------------------------------------------------------------------------------
# Training runs (module-scoped: each trains once)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ft_run(faces, tmp_path_factory):
  """Contrastive fine-tuning of a random EdgeFace (random DSR = bicubic) with the settings of facerec.demo;
  records the trainer Task that `finetune` builds."""
  workdir = str(tmp_path_factory.mktemp("ft"))
  c = config(FINETUNE, "smoke", faces, total_steps=FT_STEPS, eval_every_steps=FT_EVAL_EVERY,
             ckpt_every_steps=0, log_every_steps=10,
             **{"optim.lr": 2e-3, "optim.clip_grad_norm": 1.0, "optim.warmup_steps": 10})
  tasks = []
  real_train = trainer.train

  def spy(config_, workdir_, task):
    tasks.append(task)
    return real_train(config_, workdir_, task)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(trainer, "train", spy)
    train.finetune(c, workdir)
  return workdir, c, tasks[0]


@pytest.fixture(scope="module")
def ft_export(ft_run):
  return os.path.join(ft_run[0], train.EDGEFACE_EXPORT)


@pytest.fixture(scope="module")
def dsr_run(faces, tmp_path_factory):
  """DSR behind a frozen random EdgeFace. The identity term of a random recogniser is noise whose gradient is
  ~10x the L1 term's at the default weight 0.5 (L1 then stalls in a short run), so it is weighted 0.05 here."""
  workdir = str(tmp_path_factory.mktemp("dsr"))
  c = config(DSR, "smoke", faces, total_steps=DSR_STEPS, eval_every_steps=DSR_STEPS, ckpt_every_steps=0,
             log_every_steps=5, **{"dsr.identity_weight": 0.05, "optim.lr": 3e-3, "optim.schedule": "constant"})
  train.train_dsr(c, workdir)
  return workdir, c


@pytest.fixture(scope="module")
def arc_run(faces, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("arc"))
  c = config(FINETUNE, "smoke,arcface", faces, total_steps=4, eval_every_steps=4, ckpt_every_steps=0,
             log_every_steps=2)
  train.finetune(c, workdir)
  return workdir, c


FT_STEPS, FT_EVAL_EVERY = 40, 20
DSR_STEPS = 30


# ----------------------------------------------------------------------------------------------
# DSR
# ----------------------------------------------------------------------------------------------
def val_pairs(c):
  """(HR, VLR) arrays of every val image, VLR made as evaluation makes its probes."""
  val = data.SubjectFolder(c.data.val_root)
  vlr = data.AddVLRDeterministic(train.degradation(c), seed=c.data.eval_seed)
  pairs = [vlr.map(val[i]) for i in range(len(val))]
  return np.stack([p["image"] for p in pairs]), np.stack([p["vlr"] for p in pairs])


def test_train_dsr_lowers_l1_and_export_beats_bicubic(dsr_run):
  workdir, c = dsr_run
  logged = rows(workdir, "train/l1")
  assert [r["step"] for r in logged] == list(range(5, DSR_STEPS + 1, 5))
  for r in logged:  # loss = L1 + identity_weight x identity, both terms logged
    assert r["train/loss"] == pytest.approx(r["train/l1"] + 0.05 * r["train/identity"], rel=1e-4)
    assert 0.0 < r["train/identity"] < 2.0
  assert logged[-1]["train/l1"] < 0.97 * logged[0]["train/l1"], [r["train/l1"] for r in logged]
  assert {"val/rank_1", "val_direct/rank_1", "val_hr/rank_1"} <= set(rows(workdir, "val/rank_1")[-1])

  module, variables = models.load("dsr", os.path.join(workdir, train.DSR_EXPORT))
  assert isinstance(module, dsr_lib.DSR) and (module.in_size, module.out_size, module.features) == (16, 112, 16)
  hr, vlr = val_pairs(c)
  sr = np.asarray(module.apply(variables, vlr))
  assert sr.shape == hr.shape == (SUBJECTS * VAL_IMAGES, 112, 112, 3)
  l1_sr = float(np.mean(np.abs(np.clip(sr, 0, 1) - hr)))
  l1_bicubic = float(np.mean(np.abs(np.asarray(data.upsample_bicubic(vlr, 112)) - hr)))
  assert l1_sr < 0.98 * l1_bicubic, (l1_sr, l1_bicubic)
  # an untrained DSR is bicubic upsampling: the export moved away from it
  untrained, init = train.load_dsr(c, "random")
  np.testing.assert_allclose(np.clip(untrained.apply(init, vlr[:4]), 0, 1), data.upsample_bicubic(vlr[:4], 112),
                             atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Fine-tuning
# ----------------------------------------------------------------------------------------------
def test_contrastive_finetuning_trains_on_pk_batches_and_exports(ft_run, ft_export, faces):
  workdir, c, task = ft_run
  logged = rows(workdir, "train/loss")
  assert [r["step"] for r in logged] == list(range(10, FT_STEPS + 1, 10))
  assert all(np.isfinite(r["train/loss"]) and np.isfinite(r["train/paired_cosine"]) for r in logged)

  # P x K batches: 16 = 4 subjects x 4 images each, the trainer's iterator built from what finetune passed it
  order = task.train_order
  assert isinstance(order, data.PKOrder)
  assert (order.batch_size, order.images_per_subject, order.subjects_per_batch) == (16, 4, 4)
  it = common_data.train_iterator(task.train_source, local_batch=c.batch_size, transforms=task.train_transforms,
                                  seed=c.seed, order=order)
  for _ in range(len(order) // c.batch_size):
    batch = next(it)
    assert batch["image"].shape == (16, 112, 112, 3) and batch["vlr"].shape == (16, 16, 16, 3)
    blocks = np.asarray(batch["label"]).reshape(4, 4)
    assert (blocks == blocks[:, :1]).all() and len(set(blocks[:, 0])) == 4, blocks

  # the export is EdgeFace in the converted-weights convention; load_edgeface switches it to [0, 1] inputs
  meta = models.read_meta(ft_export)
  assert meta["model"] == c.edgeface.variant and meta["kwargs"]["normalize_input"] is False
  module, variables = train.load_edgeface(c, ft_export)
  assert module.normalize_input and module.embedding_dim == 64
  hr, _ = val_pairs(c)
  emb = np.asarray(module.apply(variables, hr[:4]))
  assert emb.shape == (4, 64) and np.isfinite(emb).all()
