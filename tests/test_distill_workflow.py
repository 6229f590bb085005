"""The LaDeDa -> Tiny-LaDeDa workflow of spec 002 end to end on synthetic data (smoke configs, 2 fake CPU devices).

One data set and one teacher fine-tuning run serve the whole module; the stages run in order: diagnose the
(random) teacher, fine-tune it, freeze-train from its export, evaluate it, train students on it (two-stage,
map with normalize + progression, BCE only, per patch), diagnose logits and evaluate the student.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from common import convert, metrics as metrics_lib, models, parallel
from configs.distill import student as student_config, teacher as teacher_config
from distill import data, evaluate, metrics, models as dmodels, synthetic, train
from tests.conftest import REPO, set_dotted, subprocess_env


pytestmark = pytest.mark.usefixtures("fast_compiles")  # tests/conftest.py


def config(module, arg: str, data_root, **overrides):
  """A distill config from `module.get_config(arg)` with the data root and dotted-key overrides set."""
  c = module.get_config(arg)
  c.data.root = str(data_root)
  return set_dotted(c, **overrides)


def rows(workdir, key: str) -> list[dict]:
  return [r for r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if key in r]


def flat(tree) -> dict:
  return convert.flatten(jax.tree.map(np.asarray, jax.device_get(tree)))


def cli(module: str, *args) -> subprocess.Popen:
  """Starts `python -m module args` (compiling as the in-process tests do); .communicate() collects it."""
  return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO,
                          env=subprocess_env(JAX_DISABLE_MOST_OPTIMIZATIONS="1"), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return synthetic.write_dataset(str(tmp_path_factory.mktemp("distill") / "data"), size=64,
                                 counts=dict(train=96, val=64, test=32), seed=0)


@pytest.fixture(scope="module")
def teacher_run(data_root, tmp_path_factory):
  """Stage 1 from a random teacher (smoke: every stage trains), evaluated every 10 of 30 steps."""
  workdir = str(tmp_path_factory.mktemp("teacher"))
  c = config(teacher_config, "smoke,teacher=random", data_root)
  train.train_teacher(c, workdir)
  return workdir, c


@pytest.fixture(scope="module")
def teacher_dir(teacher_run):
  return os.path.join(teacher_run[0], train.TEACHER_EXPORT)


@pytest.fixture(scope="module")
def two_stage_run(data_root, teacher_dir, tmp_path_factory):
  """Two-stage student on the fine-tuned teacher: 1 epoch (6 steps) per stage, default alphas in stage 2."""
  workdir = str(tmp_path_factory.mktemp("two_stage"))
  c = config(student_config, "smoke,two_stage,teacher=finetuned", data_root, **{"teacher.paths.finetuned": teacher_dir})
  train.train_student_two_stage(c, workdir)
  return workdir, c


# ----------------------------------------------------------------------------------------------
# Stages 0-2: the teacher
# ----------------------------------------------------------------------------------------------
def test_stage0_diagnose_random_teacher(data_root, tmp_path):
  c = config(teacher_config, "smoke,teacher=random", data_root)
  report = evaluate.diagnose_teacher(c, str(tmp_path))
  saved = json.loads((tmp_path / "teacher_diagnosis.json").read_text())
  assert saved["auc"] == report["auc"] and saved["verdict"] == report["verdict"]
  for key in ("auc", "ap", "accuracy", "real_accuracy", "fake_accuracy"):
    assert 0.0 <= saved[key] <= 1.0, key
  assert saved["n_real"] == saved["n_fake"] == 32
  assert saved["verdict"] == metrics.teacher_verdict(saved["auc"])[0]
  assert saved["message"] == metrics.teacher_verdict(saved["auc"])[1]
  # 64 px -> a 7x7 map per image; the image logit is the map's mean
  patch = saved["patch_logits"]
  assert patch["n"] == 64 * 7 * 7 and patch["min"] <= patch["mean"] <= patch["max"] and patch["std"] > 0
  assert saved["patch_logits_real"]["n"] == saved["patch_logits_fake"]["n"] == 32 * 7 * 7
  assert saved["image_logits"]["mean"] == pytest.approx(patch["mean"], rel=1e-4, abs=1e-6)
  for png in ("teacher_roc.png", "teacher_logits.png"):
    with Image.open(tmp_path / png) as img:
      assert img.format == "PNG" and min(img.size) > 100


def test_stage1_fine_tuning_improves_val_auc_and_exports(teacher_run, teacher_dir, data_root):
  workdir, c = teacher_run
  evals = rows(workdir, "val/auc")
  assert [r["step"] for r in evals] == [10, 20, 30]
  best = max(evals, key=lambda r: r["val/auc"])
  assert best["val/auc"] > evals[0]["val/auc"] + 0.1, evals
  assert rows(workdir, "train/bce") and rows(workdir, "control/lr_scale")
  # the seed's controls: reduce-on-plateau and early stopping on val AUC
  full = teacher_config.get_config()
  assert (full.plateau.metric, full.plateau.mode, full.plateau.factor, full.plateau.patience) == ("val/auc", "max",
                                                                                                 0.1, 2)
  assert (full.early_stop.metric, full.early_stop.mode, full.early_stop.patience) == ("val/auc", "max", 5)
  assert full.teacher.unfreeze_blocks == 1 and c.plateau.metric == c.early_stop.metric == "val/auc"

  # The export is the best evaluated step and reproduces its val AUC.
  module, variables = models.load("ladeda9", teacher_dir)
  assert set(variables) == {"params", "batch_stats"}
  val = data.split_source(data_root, "val")
  out = train.predict(module, parallel.replicate(variables, parallel.make_mesh()), val, train.val_transforms(c), c)
  assert metrics.binary_report(out["logit"], out["label"])["auc"] == pytest.approx(best["val/auc"], abs=1e-6)


def test_freezing_keeps_stem_and_early_stages_bitwise(data_root, teacher_dir, tmp_path):
  c = config(teacher_config, "smoke", data_root, **{"teacher.weights": teacher_dir, "teacher.unfreeze_blocks": 1,
                                                     "total_steps": 3, "eval_every_steps": 0, "ckpt_every_steps": 0})
  state = train.train_teacher(c, str(tmp_path))
  assert int(state["step"]) == 3
  _, start = models.load("ladeda9", teacher_dir)
  for collection, got in (("params", state["params"]), ("batch_stats", state["model_state"]["batch_stats"])):
    before, after = flat(start[collection]), flat(got)
    assert before.keys() == after.keys()
    frozen = [k for k in before if k.startswith(("conv1/", "conv2/", "bn1/", "layer1_", "layer2_", "layer3_"))]
    trained = [k for k in before if k.startswith(("layer4_", "fc/"))]
    assert frozen and trained and len(frozen) + len(trained) == len(before)
    for k in frozen:  # no update, and the stem / early BatchNorms ran on their running statistics
      np.testing.assert_array_equal(after[k], before[k], err_msg=f"{collection}/{k}")
    assert [k for k in trained if not np.array_equal(after[k], before[k])] == trained, collection


def test_stage2_evaluate_teacher_cli_recommends(data_root, teacher_run, teacher_dir, tmp_path):
  run = cli("distill.evaluate_teacher", "--config", "configs/distill/teacher.py:smoke,teacher=finetuned",
            "--workdir", str(tmp_path), f"--config.data.root={data_root}",
            f"--config.teacher.paths.finetuned={teacher_dir}")
  out, err = run.communicate(timeout=300)
  assert run.returncode == 0, err[-2000:]
  report = json.loads((tmp_path / "teacher_evaluation.json").read_text())
  level, message = metrics.distillation_recommendation(report["auc"])
  assert report["recommendation"] == level and report["message"] == message
  assert f"RECOMMENDATION [{level}]: {message}" in out
  assert report["teacher_path"] == teacher_dir
  best = max(r["val/auc"] for r in rows(teacher_run[0], "val/auc"))
  assert report["auc"] == pytest.approx(best, abs=1e-6)
  assert (tmp_path / "teacher_eval_roc.png").exists() and (tmp_path / "teacher_eval_logits.png").exists()


# ----------------------------------------------------------------------------------------------
# Stage 3: the student
# ----------------------------------------------------------------------------------------------
def test_two_stage_student(two_stage_run):
  workdir, c = two_stage_run
  s1, s2 = os.path.join(workdir, "stage1"), os.path.join(workdir, "stage2")
  for d in (os.path.join(s1, train.STUDENT_EXPORT), os.path.join(s2, train.STUDENT_EXPORT),
            os.path.join(workdir, train.STUDENT_EXPORT)):
    assert os.path.isfile(os.path.join(d, "model.json")), d
  # 96 training images / batch 16 = 6 steps per epoch, 1 epoch per stage
  assert [r["step"] for r in rows(s1, "val/auc")] == [6] and [r["step"] for r in rows(s2, "val/auc")] == [6]
  # stage 1: distillation only; stage 2: the configured (default) alphas
  for r in rows(s1, "train/loss"):
    assert r["train/alpha_distill"] == 1.0 and r["train/alpha_task"] == 0.0
    assert r["train/loss"] == pytest.approx(r["train/distill"], rel=1e-5)
  for r in rows(s2, "train/loss"):
    assert r["train/alpha_distill"] == pytest.approx(0.05) and r["train/alpha_task"] == pytest.approx(0.95)
    assert r["train/loss"] == pytest.approx(0.05 * r["train/distill"] + 0.95 * r["train/task"], rel=1e-4)

  # Stage 2 starts from stage 1's export: its 6 Adam steps at lr 1e-4 stay ~10x closer to stage 1's weights than
  # stage 1's 6 steps at lr 1e-3 moved from the scratch init (where a stage 2 from scratch would start).
  _, v1 = models.load("tiny_ladeda", os.path.join(s1, train.STUDENT_EXPORT))
  module, v2 = models.load("tiny_ladeda", os.path.join(workdir, train.STUDENT_EXPORT))
  assert isinstance(module, dmodels.TinyLaDeDa)
  scratch = module.init(jax.random.split(jax.random.key(c.seed))[0], np.zeros((1, 64, 64, 3), np.float32))
  p0, p1, p2 = flat(scratch["params"]), flat(v1["params"]), flat(v2["params"])
  dist = lambda a, b: max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
  assert dist(p2, p1) < 0.3 * dist(p1, p0), (dist(p2, p1), dist(p1, p0))
  v2_stage = flat(models.load("tiny_ladeda", os.path.join(s2, train.STUDENT_EXPORT))[1])
  assert all(np.array_equal(a, v2_stage[k]) for k, a in flat(v2).items())  # W/student_export is stage 2's


def test_student_map_normalize_and_progression(data_root, teacher_dir, two_stage_run, tmp_path):
  c = config(student_config, "smoke,normalize,progression,teacher=finetuned", data_root,
             **{"teacher.paths.finetuned": teacher_dir, "total_steps": 20, "log_every_steps": 1,
                "eval_every_steps": 0, "ckpt_every_steps": 0})
  train.train_student(c, str(tmp_path))
  logged = rows(tmp_path, "train/loss")
  assert [r["step"] for r in logged] == list(range(1, 21))
  # The seed's progression at 0/25/50/75 % of 20 steps; row `step` logs the update from step - 1.
  schedule = ((0, 0.01), (5, 0.05), (10, 0.1), (15, 0.5))
  for r in logged:
    want = [a for start, a in schedule if r["step"] - 1 >= start][-1]
    assert r["train/alpha_distill"] == pytest.approx(want), r
    assert r["train/alpha_task"] == pytest.approx(1 - want), r
  # Standardised maps: the MSE is 2 (1 - correlation) (n - 1) / n < 4 whatever the logit scales; the raw MSE
  # between a fresh student and this teacher (stage 1's first steps) is ~10.
  distill = [r["train/distill"] for r in logged]
  assert all(0.0 < d < 4.0 for d in distill), distill
  raw = rows(os.path.join(two_stage_run[0], "stage1"), "train/distill")[0]["train/distill"]
  assert raw > 4.0, raw
  module, _ = models.load("tiny_ladeda", str(tmp_path / train.STUDENT_EXPORT))
  assert isinstance(module, dmodels.TinyLaDeDa)


def test_bce_only_loads_no_teacher(data_root, tmp_path):
  missing = str(tmp_path / "no_such_teacher")
  c = config(student_config, "smoke,bce_only", data_root, **{"teacher.weights": missing, "total_steps": 10,
                                                           "eval_every_steps": 0, "ckpt_every_steps": 0})
  with pytest.raises(FileNotFoundError):
    train.teacher_path(c)  # any attempt to load this teacher would fail
  train.train_student(c, str(tmp_path / "run"))
  logged = rows(tmp_path / "run", "train/loss")
  assert logged and all(r["train/alpha_task"] == 1.0 and "train/distill" not in r for r in logged)
  assert all(r["train/loss"] == pytest.approx(r["train/task"]) for r in logged)
  models.load("tiny_ladeda", str(tmp_path / "run" / train.STUDENT_EXPORT))


def test_per_patch_student_lowers_patch_mse(data_root, teacher_dir, tmp_path):
  c = config(student_config, "smoke,per_patch,teacher=finetuned", data_root,
             **{"teacher.paths.finetuned": teacher_dir, "total_steps": 20, "eval_every_steps": 0,
                "ckpt_every_steps": 0})
  train.train_student(c, str(tmp_path))
  mse = [r["train/patch_mse"] for r in rows(tmp_path, "train/patch_mse")]
  assert len(mse) == 4 and mse[-1] < 0.85 * mse[0], mse
  assert (tmp_path / train.STUDENT_EXPORT / "model.json").exists()


# ----------------------------------------------------------------------------------------------
# Measuring the student
# ----------------------------------------------------------------------------------------------
def test_diagnose_logits(data_root, teacher_dir, two_stage_run, tmp_path):
  student_dir = os.path.join(two_stage_run[0], train.STUDENT_EXPORT)
  c = config(student_config, "smoke,teacher=finetuned", data_root,
             **{"teacher.paths.finetuned": teacher_dir, "student.weights": student_dir})
  evaluate.diagnose_logits(c, str(tmp_path))
  report = json.loads((tmp_path / "logit_diagnosis.json").read_text())
  assert report["student_weights"] == student_dir and report["teacher_weights"] == "finetuned"
  assert report["teacher_map"] == [7, 7] and report["student_map"] == [30, 30]
  t, s = report["teacher"], report["student"]
  assert t["n"] == s["n"] == 64 * 7 * 7
  assert report["range_ratio"] == pytest.approx((s["max"] - s["min"]) / (t["max"] - t["min"]))
  assert report["std_ratio"] == pytest.approx(s["std"] / t["std"])
  assert report["mse"] >= 0 and 0 <= report["mse_normalized"] < 4
  want = [v for v, hit in ((metrics.SCALE_MISMATCH, not 1 / 3 < report["range_ratio"] < 3),
                           (metrics.LOSS_DOMINATES, report["mse"] > 100)) if hit] or [metrics.LOGITS_OK]
  assert report["verdicts"] == want


def test_evaluate_student(data_root, teacher_dir, two_stage_run, tmp_path):
  student_dir = os.path.join(two_stage_run[0], train.STUDENT_EXPORT)
  c = config(student_config, "smoke,teacher=finetuned", data_root,
             **{"teacher.paths.finetuned": teacher_dir, "student.weights": student_dir})
  evaluate.evaluate_student(c, str(tmp_path))
  report = json.loads((tmp_path / "student_evaluation.json").read_text())
  assert set(report["subsets"]) == {"seen_generators", "unseen_generator"}
  for entry in report["subsets"].values():
    assert entry["images"] == 32
    for who in ("student", "teacher"):
      assert entry[who]["n_real"] == entry[who]["n_fake"] == 16 and 0 <= entry[who]["auc"] <= 1
  for who in ("student", "teacher"):  # overall = both subsets pooled (equal sizes: accuracy is their mean)
    overall = report[f"overall_{who}"]
    assert overall["n_real"] == overall["n_fake"] == 32
    assert overall["accuracy"] == pytest.approx(np.mean([e[who]["accuracy"] for e in report["subsets"].values()]))
  ips = report["images_per_sec"]
  assert ips["student"] > 0 and ips["teacher"] > 0 and ips["image_size"] == [64, 64]
  assert (tmp_path / "student_roc.png").exists()


def test_cli_bad_data_is_one_line_error(data_root, tmp_path):
  missing = str(tmp_path / "nowhere")
  runs = [  # in parallel: each is mostly interpreter and jax start-up
      cli("distill.train_teacher", "--config", "configs/distill/teacher.py:smoke,teacher=random",
          "--workdir", str(tmp_path / "w1"), f"--config.data.root={missing}"),
      cli("distill.train_student", "--config", "configs/distill/student.py:smoke,bce_only",
          "--workdir", str(tmp_path / "w2"), f"--config.data.root={data_root}", "--config.data.val_split=validation"),
  ]
  (_, err1), (_, err2) = (p.communicate(timeout=300) for p in runs)
  assert [p.returncode for p in runs] == [2, 2], (err1[-2000:], err2[-2000:])
  last1, last2 = err1.strip().splitlines()[-1], err2.strip().splitlines()[-1]
  assert last1.startswith("error: ") and missing in last1 and "data root not found" in last1
  assert last2.startswith("error: ") and os.path.join(data_root, "validation") in last2 and "not found" in last2
  assert "Traceback" not in err1 + err2
