"""The config sections every distill command reads (data, teacher, student, eval), shared by teacher.py and
student.py. Imports only common.config and ml_collections."""

import ml_collections

from common import config as config_lib


def workflow_config(arg=None) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  """(config, parsed args): the data, teacher and student sections every distill command reads; `smoke`
  shrinks everything for CPU."""
  a = config_lib.parse_arg(arg, smoke=False, teacher="wildrf", two_stage=False, bce_only=False, per_patch=False,
                           normalize=False, progression=False)
  c = config_lib.base_config()
  c.data = ml_collections.ConfigDict(dict(
      root="", train_split="train", val_split="val", test_split="test",
      format="folder",  # folder | arrayrecord (root made by python -m distill.prepare_data)
      resize=256, crop=224, flip=True, resample="bilinear",  # official: Resize(256) -> RandomCrop(224) / full image
      max_bad_fraction=0.01, imbalance_ratio=1.5))
  # weights: wildrf | forensynth | finetuned (a path under `paths`) | a converted ladeda9 directory | random
  # (random init: demos and tests only).
  c.teacher = ml_collections.ConfigDict(dict(
      weights=a.teacher, paths=dict(wildrf="", forensynth="", finetuned=""),
      # dtype: compute dtype ("bfloat16" on GPU/TPU); params, BatchNorm statistics and logits stay float32.
      model=dict(width=64, layers=(3, 4, 6, 3), kernel3=(1, 1, 0, 0), preprocess_type="NPR", stem_bn_momentum=0.001,
                 dtype="float32"),
      unfreeze_blocks=1))  # kernel3: LaDeDa33/17/9/5 = (1,1,1,1) / (1,1,1,0) / (1,1,0,0) / (1,0,0,0)
  c.student = ml_collections.ConfigDict(dict(
      model=dict(width=8, preprocess_type="right_diag", stem_bn_momentum=0.001, dtype="float32"),
      weights="",  # a tiny_ladeda directory (evaluate_student, diagnose_logits); "" -> fresh init
      mode="patch" if a.per_patch else "map",
      alpha_distill=0.0 if a.bce_only else 0.05, alpha_task=1.0 if a.bce_only else 0.95,
      normalize=a.normalize,
      progression=((0.0, 0.01), (0.25, 0.05), (0.5, 0.1), (0.75, 0.5)) if a.progression else (),
      two_stage=a.two_stage,
      stage1=dict(epochs=5.0, lr=1e-3, alpha_distill=1.0, alpha_task=0.0),
      stage2=dict(epochs=20.0, lr=1e-4)))
  c.eval = ml_collections.ConfigDict(dict(batch_size=32, throughput_batch=32, throughput_repeats=10))
  c.best_metric, c.best_mode = "val/auc", "max"
  c.log_every_steps, c.eval_every_steps, c.eval_every_epochs = 50, 0, 1.0
  c.ckpt_every_steps, c.ckpt_every_epochs = 0, 1.0
  c.worker_count = 4
  if a.smoke:
    # 64 px synthetic images at their own size (a crop at odd offsets would shift NPR's 2x2 grid); a width-8,
    # one-block-per-stage LaDeDa keeps the 9x9 receptive field; stem BatchNorm statistics that can follow a
    # from-scratch model within a few dozen steps (the original's 0.001 needs thousands).
    c.data.resize, c.data.crop = 64, 64
    c.teacher.model.update(width=8, layers=(1, 1, 1, 1), stem_bn_momentum=0.1)
    c.student.model.stem_bn_momentum = 0.1
    c.batch_size, c.eval.batch_size, c.eval.throughput_batch, c.eval.throughput_repeats = 16, 32, 8, 3
    c.total_epochs, c.eval_every_epochs, c.ckpt_every_epochs = 0.0, 0.0, 0.0
    c.total_steps, c.eval_every_steps, c.ckpt_every_steps, c.log_every_steps = 30, 10, 10, 5
    c.student.stage1.epochs, c.student.stage2.epochs = 1.0, 1.0
    c.worker_count = 0
  return c, a
