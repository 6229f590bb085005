"""--config.data.format=arrayrecord: every trainer (and an evaluation command) gives the same results from the
prepared records as from the original folders / .npy files on the same images (2 fake CPU devices)."""

import jax
import numpy as np
import pytest

from common import checkpoint, trainer
from configs.distill import teacher as teacher_config
from configs.ear_teacher import default as ear_config
from configs.facerec import dsr as dsr_config
from distill import evaluate as distill_evaluate, prepare_data as distill_prep, synthetic as distill_synth
from distill import train as distill_train
from ear_teacher import prepare_data as ear_prep, synthetic as ear_synth, train as ear_train
from facerec import prepare_data as face_prep, synthetic as face_synth, train as face_train
from tests.conftest import set_dotted

SHORT = {"total_steps": 3, "eval_every_steps": 100, "ckpt_every_steps": 100, "log_every_steps": 1, "keep_best": 0}


def _same_params(a_dir, b_dir):
  a, _ = checkpoint.load_trained_params(str(a_dir))
  b, _ = checkpoint.load_trained_params(str(b_dir))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
  base = tmp_path_factory.mktemp("formats")
  ear_synth.main(["--out", str(base / "ear"), "--num_identities", "8", "--images_per_identity", "4",
                  "--val_identities", "2", "--size", "56", "--seed", "2"])
  for split in ("train", "val"):
    ear_prep.prepare(str(base / "ear" / f"{split}.npy"), str(base / f"ear_{split}_rec"),
                     ids=str(base / "ear" / f"{split}_ids.npy"))
  distill_synth.write_dataset(str(base / "dist"), size=32, counts=dict(train=32, val=16, test=8))
  distill_prep.prepare(str(base / "dist"), str(base / "dist_rec"))
  face_synth.write_dataset(str(base / "face"), subjects=6, images=6, test_subjects=2, eval_images=5)
  for split in ("train", "val"):
    face_prep.prepare(str(base / "face" / split), str(base / f"face_{split}_rec"))
  return base


def test_ear_teacher_records_train_like_npy(datasets, tmp_path, fast_compiles):
  for fmt, train_path, val_path in (("npy", "ear/train.npy", "ear/val.npy"),
                                     ("arrayrecord", "ear_train_rec", "ear_val_rec")):
    c = set_dotted(ear_config.get_config("smoke"), train_npy=str(datasets / train_path),
                   val_npy=str(datasets / val_path), **{"data.format": fmt}, **SHORT)
    task = ear_train.make_task(c, str(tmp_path / fmt))[0]
    trainer.train(c, str(tmp_path / fmt), task)
  _same_params(tmp_path / "npy", tmp_path / "arrayrecord")


def test_distill_records_train_and_evaluate_like_folders(datasets, tmp_path, fast_compiles):
  reports = {}
  for fmt, root in (("folder", "dist"), ("arrayrecord", "dist_rec")):
    c = set_dotted(teacher_config.get_config("smoke,teacher=random"), **{"data.root": str(datasets / root),
                                                                         "data.format": fmt,
                                                                         "data.resize": 32, "data.crop": 32}, **SHORT)
    distill_train.train_teacher(c, str(tmp_path / fmt))
    reports[fmt] = distill_evaluate.diagnose_teacher(c, str(tmp_path / f"{fmt}_diag"))
  _same_params(tmp_path / "folder", tmp_path / "arrayrecord")
  assert reports["folder"]["auc"] == reports["arrayrecord"]["auc"]
  assert reports["folder"]["patch_logits"] == reports["arrayrecord"]["patch_logits"]


def test_facerec_records_train_like_folders(datasets, tmp_path, fast_compiles):
  vals = {}
  for fmt, train_root, val_root in (("folder", "face/train", "face/val"),
                                     ("arrayrecord", "face_train_rec", "face_val_rec")):
    c = set_dotted(dsr_config.get_config("smoke"), **{"data.train_root": str(datasets / train_root),
                                                      "data.val_root": str(datasets / val_root),
                                                      "data.format": fmt, "edgeface.weights": "random"}, **SHORT)
    face_train.train_dsr(c, str(tmp_path / fmt))
    vals[fmt] = [r for r in map(__import__("json").loads, open(tmp_path / fmt / "metrics.jsonl")) if "val/rank_1" in r]
  _same_params(tmp_path / "folder", tmp_path / "arrayrecord")
  assert vals["folder"][-1]["val/rank_1"] == vals["arrayrecord"][-1]["val/rank_1"]


def test_unknown_format_is_a_clear_error(datasets):
  c = set_dotted(teacher_config.get_config("smoke,teacher=random"), **{"data.root": str(datasets / "dist"),
                                                                       "data.format": "tfrecord"})
  with pytest.raises(ValueError, match="data.format='tfrecord'; use folder or arrayrecord"):
    distill_train.train_val_sources(c)
  c = set_dotted(teacher_config.get_config("smoke,teacher=random"), **{"data.root": str(datasets / "dist"),
                                                                       "data.format": "arrayrecord"})
  with pytest.raises(ValueError, match="prepare_data"):
    distill_train.train_val_sources(c)
