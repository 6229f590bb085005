"""Tiny-LaDeDa student distilled from the LaDeDa teacher (spec 002 stage 3, spec 003 diagnostics).

Real run (teacher fine-tuned with configs/distill/teacher.py, or a converted wildrf/forensynth one):
  python -m distill.train_student --config configs/distill/student.py:teacher=finetuned --workdir runs/student \
    --config.data.root=DATA --config.teacher.paths.finetuned=runs/teacher/teacher_finetuned
  python -m distill.evaluate_student --config configs/distill/student.py:teacher=finetuned --workdir runs/student_eval \
    --config.data.root=DATA --config.teacher.paths.finetuned=runs/teacher/teacher_finetuned \
    --config.student.weights=runs/student/student_export
Expected: train/distill and train/task logged separately (the distillation term no longer swamps the BCE:
mean-reduced MSE x 0.05), val/auc per epoch, the best student exported; the evaluation prints per-subset
AUC/AP/accuracy for student and teacher and their images/s.

The seed's settings: Adam lr 1e-3, batch 16, 50 epochs, alpha_distill 0.05 / alpha_task 0.95.
Arguments (comma separated):
  teacher=wildrf|forensynth|finetuned|random|DIR   which frozen teacher (never checkpointed)
  two_stage     student.stage1 (5 epochs, lr 1e-3, distillation only) then student.stage2 (20 epochs, lr 1e-4,
                the alphas below) - use with python -m distill.train_student_two_stage
  bce_only      alpha_distill 0 / alpha_task 1, no teacher loaded (the seed's test_bce_only.yaml baseline)
  progression   the seed's alpha progression 0.01 -> 0.05 -> 0.1 -> 0.5 at 0/25/50/75 % of training
  normalize     standardise both maps per batch before the MSE (spec 003's fix for a scale mismatch)
  per_patch     the original paper's recipe: 10x10 raw patches regress the teacher's 9x9 patch logit (MSE only)
  smoke         tiny CPU run on python -m distill.synthetic data (64 px, width-8 teacher, 30 steps)
Smoke: python -m distill.train_student --config configs/distill/student.py:smoke,teacher=DIR --workdir /tmp/dd_student \
  --config.data.root=/tmp/dd   (DIR = /tmp/dd_teacher/teacher_finetuned from the teacher smoke run; 30 s here).
"""

from configs.distill import common


def get_config(arg=None):
  c, a = common.workflow_config(arg)
  if not a.smoke:
    c.batch_size, c.total_steps, c.total_epochs = 16, 0, 50.0
  c.optim.name, c.optim.lr, c.optim.weight_decay = "adam", 1e-3, 0.0
  c.optim.schedule, c.optim.clip_grad_norm = "constant", 0.0
  if a.smoke:
    c.optim.lr = 1e-2  # 30 steps from scratch
  return c
