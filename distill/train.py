"""LaDeDa -> Tiny-LaDeDa trainers: teacher fine-tuning (stage 1) and the student (stage 3, one or two stages).

    python -m distill.train_teacher --config configs/distill/teacher.py --workdir W ...
    python -m distill.train_student --config configs/distill/student.py --workdir W ...
    python -m distill.train_student_two_stage --config configs/distill/student.py --workdir W ...

Both run on `common.trainer`. Resume order: W/checkpoints > config.init_from (the teacher's converted
weights for fine-tuning, with BatchNorm statistics; stage 1's student for stage 2) > scratch.

* Teacher fine-tuning (spec 002 stage 1): BCE-with-logits on the image logit; only the last
  `teacher.unfreeze_blocks` stages of layer1..layer4 (+ fc) train; the frozen stem and stages get no gradient
  and keep their BatchNorm in inference mode (running statistics neither used from the batch nor updated).
  Adam 1e-4 + L2 1e-4, reduce-on-plateau and early stopping on val AUC, best checkpoint by AUC, exported
  as a `ladeda9` model directory W/teacher_finetuned (the student's `teacher.weights=finetuned`).
* Student (spec 002 stage 3): the teacher is frozen, passed to every step as a constant and never
  checkpointed. mode=map: alpha_distill * MSE(student map pooled onto the teacher grid, teacher map) +
  alpha_task * BCE (distill/losses.py), alphas constant or the seed's progression over training;
  mode=patch: the original paper's per-patch regression (10x10 raw patches -> the teacher's 9x9 patch logit,
  no BCE). BCE-only (alpha_distill 0) loads no teacher at all. Best by val AUC, exported as a
  `tiny_ladeda` model directory W/student_export.
* Two stages: stage 1 (W/stage1, `student.stage1`: epochs 5, lr 1e-3, alpha_distill 1, alpha_task 0) trains
  the whole student to reproduce the teacher's patch-logit map; stage 2 (W/stage2, `student.stage2`: epochs
  20, lr 1e-4, the configured alphas) starts from stage 1's best weights and BatchNorm statistics and trains
  the whole student on the combined objective. W/student_export is stage 2's best.
"""

import functools
import os
import shutil

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from common import checkpoint, data as common_data, models, optim, parallel, trainer
from distill import data, losses, metrics, models as dmodels

TEACHER_NAMES = ("wildrf", "forensynth", "finetuned")
TEACHER_EXPORT, STUDENT_EXPORT = "teacher_finetuned", "student_export"


# ----------------------------------------------------------------------------------------------
# Models, weights, data
# ----------------------------------------------------------------------------------------------
def teacher_path(config) -> str:
  """The converted teacher directory named by config.teacher.weights ('' for a random teacher)."""
  w = config.teacher.weights
  if w == "random":
    return ""
  if w in TEACHER_NAMES:
    path = config.teacher.paths[w]
    if not path:
      fix = (f"run python -m distill.train_teacher and pass --config.teacher.paths.finetuned=W/{TEACHER_EXPORT}"
             if w == "finetuned" else
             f"convert it (python -m common.convert --model ladeda9 --src {'WildRF' if w == 'wildrf' else 'ForenSynth'}"
             f"_LaDeDa.pth --dst DIR) and pass --config.teacher.paths.{w}=DIR")
      raise ValueError(f"teacher.weights={w!r} but config.teacher.paths.{w} is empty; {fix}")
    return path
  if not os.path.isdir(w):
    raise FileNotFoundError(f"teacher.weights={w!r} is neither {'/'.join(TEACHER_NAMES)}/random nor a directory")
  return w


def load_teacher(config, image_hw):
  """(module, host variables) of the frozen teacher; a random one (seeded) when teacher.weights=random."""
  path = teacher_path(config)
  if not path:
    logging.warning("teacher has RANDOM weights (teacher.weights=random): only meaningful for demos and tests")
  return models.load_or_init(path or "random", dmodels.LaDeDa(**config.teacher.model), (1, *image_hw, 3),
                             config.seed + 1, names=("ladeda9",), dtype=config.teacher.model.get("dtype", "float32"))


def load_student(config, image_hw):
  """(module, host variables): config.student.weights (a tiny_ladeda directory) or a fresh seeded init."""
  return models.load_or_init(config.student.weights or "random", dmodels.TinyLaDeDa(**config.student.model),
                             (1, *image_hw, 3), config.seed, names=("tiny_ladeda",),
                             dtype=config.student.model.get("dtype", "float32"))


def split_source(config, split: str, subsets: bool = False):
  """One source over root/split (or {subset: source}), from image folders or prepared ArrayRecord data."""
  d = config.data
  if d.format == "arrayrecord":
    from distill import prepare_data  # pylint: disable=import-outside-toplevel
    read = prepare_data.split_sources_records if subsets else prepare_data.split_source_records
    return read(d.root, split, imbalance_ratio=d.imbalance_ratio)
  if d.format != "folder":
    raise ValueError(f"data.format={d.format!r}; use folder or arrayrecord")
  read = data.split_sources if subsets else data.split_source
  return read(d.root, split, max_bad_fraction=d.max_bad_fraction, imbalance_ratio=d.imbalance_ratio)


def train_val_sources(config):
  if not config.data.root:
    raise ValueError("set --config.data.root to a folder with train/ and val/ splits of {real,fake} or "
                     "{0_real,1_fake} images (make a synthetic one with python -m distill.synthetic --out DIR)")
  return split_source(config, config.data.train_split), split_source(config, config.data.val_split)


def val_transforms(config):
  return data.eval_transforms(config.data.resize, config.data.crop, resample=config.data.resample)


@functools.lru_cache(maxsize=16)
def _logits_fn(module, maps: bool):
  """One function per (module, maps), so trainer.predict compiles it once per run, not per evaluation."""
  def fn(variables, batch):
    logit, aux = module.apply(variables, batch["image"])
    out = {"logit": logit, "label": batch["label"]}
    if maps:
      out["patch_logits"] = aux["patch_logits"]
    return out
  return fn


def predict(module, variables, source, transforms, config, maps: bool = False) -> dict:
  """{"logit", "label"(, "patch_logits")} for every image of `source`, in source order; `variables` on the
  devices (the train state's, or host ones placed with `parallel.replicate`)."""
  bs = config.eval.batch_size
  batches = common_data.eval_batches(source, global_batch=bs, local_batch=parallel.local_batch_size(bs),
                                     transforms=transforms)
  return trainer.predict(_logits_fn(module, maps), variables, batches)


def _val_eval_fn(module, val_source, config):
  """eval_fn for the trainer: the binary report of the model in the train state on the val split."""
  transforms = val_transforms(config)

  def eval_fn(state, step):
    del step
    out = predict(module, {"params": state["params"], **state["model_state"]}, val_source, transforms, config)
    report = metrics.binary_report(out["logit"], out["label"])
    report["loss"] = float(np.mean(np.logaddexp(0.0, out["logit"]) - out["label"] * out["logit"]))
    return {f"val/{k}": v for k, v in report.items() if not k.startswith("n_")}

  return eval_fn


def _export_best(workdir: str, config, module, name: str, dst: str) -> None:
  """The best evaluated checkpoint (params + BatchNorm statistics) as the model directory `dst`."""
  checkpoint.export_best(workdir, config, name, models.module_kwargs(module),
                         lambda s: {"params": s["params"], **s["model_state"]}, dst)


# ----------------------------------------------------------------------------------------------
# Stage 1: teacher fine-tuning
# ----------------------------------------------------------------------------------------------
def teacher_module(config):
  """The LaDeDa to fine-tune: the converted teacher's own architecture, else config.teacher.model."""
  path = teacher_path(config)
  dtype = config.teacher.model.get("dtype", "float32")  # a compute choice, never saved with the weights
  return models.module_of(path).clone(dtype=dtype) if path else dmodels.LaDeDa(**config.teacher.model)


def teacher_freeze_patterns(unfreeze_blocks: int, num_stages: int = 4) -> tuple[str, ...]:
  """optim.freeze regexes: the stem and all but the last `unfreeze_blocks` stages (fc always trains; -1: all)."""
  if unfreeze_blocks < 0 or unfreeze_blocks > num_stages:
    return ()
  frozen = [str(i) for i in range(1, num_stages - unfreeze_blocks + 1)]
  patterns = ["(conv1|conv2|bn1)/.*"]
  if frozen:
    patterns.append(f"layer({'|'.join(frozen)})_\\d+/.*")
  return tuple(patterns)


def teacher_task(config, train_src, val_src) -> trainer.Task:
  """Stage 1: BCE fine-tuning of the last `teacher.unfreeze_blocks` stages (+ fc) of the configured teacher."""
  hw = (config.data.crop, config.data.crop)
  path = teacher_path(config)
  n = config.teacher.unfreeze_blocks
  frozen_stages = 0 if n < 0 or n > 4 else 5 - n
  module = teacher_module(config)

  def derive_config(c):
    derived = {"optim.freeze": optim.with_frozen(c.optim.freeze, teacher_freeze_patterns(n))}
    if path and not c.init_from.path:  # the weights to fine-tune, with their BatchNorm statistics
      derived["init_from.path"] = path
    return derived

  def loss_fn(params, batch, ctx):
    (logit, _), new_state = module.apply({"params": params, **ctx.model_state}, batch["image"], train=True,
                                         frozen_stages=frozen_stages, mutable=["batch_stats"])
    loss = losses.bce_with_logits(logit, batch["label"])
    accuracy = jnp.mean((logit > 0) == (batch["label"] > 0))
    return loss, ({"bce": loss, "accuracy": accuracy}, new_state)

  return trainer.Task(
      init_variables=lambda rng: module.init(rng, jnp.zeros((1, *hw, 3))), loss_fn=loss_fn, train_source=train_src,
      train_transforms=data.train_transforms(config.data.resize, resample=config.data.resample),
      device_transform=data.device_train_transform(config.data.crop, config.data.flip),
      eval_fn=_val_eval_fn(module, val_src, config), derive_config=derive_config)


def train_teacher(config, workdir: str):
  task = teacher_task(config, *train_val_sources(config))
  state = trainer.train(config, workdir, task)
  _export_best(workdir, config, teacher_module(config), "ladeda9", os.path.join(workdir, TEACHER_EXPORT))
  return state


# ----------------------------------------------------------------------------------------------
# Stage 3: the student
# ----------------------------------------------------------------------------------------------
def needs_teacher(cfg_student) -> bool:
  return cfg_student.mode == "patch" or cfg_student.alpha_distill > 0 or bool(cfg_student.progression)


def student_task(config, train_src, val_src) -> trainer.Task:
  """Stage 3: the Tiny-LaDeDa student against the frozen teacher (a step constant), or BCE only."""
  cs = config.student
  if cs.mode not in ("map", "patch"):
    raise ValueError(f"student.mode={cs.mode!r}; use map (the seed's image-level recipe) or patch (per-patch)")
  hw = (config.data.crop, config.data.crop)
  student = dmodels.TinyLaDeDa(**cs.model)
  teacher, teacher_vars = load_teacher(config, hw) if needs_teacher(cs) else (None, None)
  progression = tuple(tuple(p) for p in cs.progression)

  def loss_fn(params, batch, ctx):
    x = batch["image"]
    if cs.mode == "patch":
      _, t_aux = teacher.apply(ctx.constants, x)
      targets = t_aux["patch_logits"]
      patches = losses.extract_patches(x, 10, 8)
      nh, nw = min(patches.shape[1], targets.shape[1]), min(patches.shape[2], targets.shape[2])
      patches = patches[:, :nh, :nw].reshape(-1, 10, 10, x.shape[-1])
      (s_logit, _), new_state = student.apply({"params": params, **ctx.model_state}, patches, train=True,
                                              mutable=["batch_stats"])
      loss = losses.patch_distillation_loss(s_logit, targets[:, :nh, :nw].reshape(-1))
      return loss, ({"patch_mse": loss}, new_state)
    (logit, aux), new_state = student.apply({"params": params, **ctx.model_state}, x, train=True,
                                            mutable=["batch_stats"])
    # the trainer's own step count, so the alpha progression spans exactly the run
    a_d, a_t = losses.alpha_weights(ctx.step, ctx.total_steps, cs.alpha_distill, cs.alpha_task, progression)
    if teacher is None:  # BCE only: no teacher forward at all
      task_loss = losses.bce_with_logits(logit, batch["label"])
      return a_t * task_loss, ({"task": task_loss, "alpha_task": a_t}, new_state)
    _, t_aux = teacher.apply(ctx.constants, x)
    total, parts = losses.distillation_loss(logit, aux["patch_logits"], t_aux["patch_logits"], batch["label"],
                                            a_d, a_t, normalize=cs.normalize)
    return total, (parts, new_state)

  return trainer.Task(
      init_variables=lambda rng: student.init(rng, jnp.zeros((1, *hw, 3))), loss_fn=loss_fn, train_source=train_src,
      train_transforms=data.train_transforms(config.data.resize, resample=config.data.resample),
      device_transform=data.device_train_transform(config.data.crop, config.data.flip),
      eval_fn=_val_eval_fn(student, val_src, config), constants=teacher_vars)


def _run_student(config, workdir: str):
  state = trainer.train(config, workdir, student_task(config, *train_val_sources(config)))
  _export_best(workdir, config, dmodels.TinyLaDeDa(**config.student.model), "tiny_ladeda",
               os.path.join(workdir, STUDENT_EXPORT))
  return state


def train_student(config, workdir: str):
  """Single-stage student training (or both stages when config.student.two_stage)."""
  if config.student.two_stage:
    return train_student_two_stage(config, workdir)
  return _run_student(config, workdir)


def stage_config(config, stage: int) -> ml_collections.ConfigDict:
  """The config of stage 1 or 2: its epochs, lr and (stage 1) alphas over the single-stage settings."""
  c = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
  s = config.student.stage1 if stage == 1 else config.student.stage2
  c.total_steps, c.total_epochs = 0, float(s.epochs)
  c.optim.lr = float(s.lr)
  c.student.two_stage = False
  if stage == 1:
    c.student.alpha_distill, c.student.alpha_task, c.student.progression = s.alpha_distill, s.alpha_task, ()
  return c


def train_student_two_stage(config, workdir: str):
  if config.student.mode != "map":
    raise ValueError("two-stage training uses the image-level recipe; set --config.student.mode=map")
  dir1, dir2 = os.path.join(workdir, "stage1"), os.path.join(workdir, "stage2")
  c1 = stage_config(config, 1)
  logging.info("stage 1: %g epochs at lr %g, alpha_distill %g / alpha_task %g", c1.total_epochs, c1.optim.lr,
               c1.student.alpha_distill, c1.student.alpha_task)
  _run_student(c1, dir1)
  c2 = stage_config(config, 2)
  c2.init_from.path, c2.init_from.into = os.path.join(dir1, STUDENT_EXPORT), ""
  logging.info("stage 2: %g epochs at lr %g from %s", c2.total_epochs, c2.optim.lr, c2.init_from.path)
  state = _run_student(c2, dir2)
  if jax.process_index() == 0:
    final = os.path.join(workdir, STUDENT_EXPORT)
    if os.path.exists(final):
      shutil.rmtree(final)
    shutil.copytree(os.path.join(dir2, STUDENT_EXPORT), final)
  return state
