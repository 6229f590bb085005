"""LaDeDa teacher: diagnose (stage 0), fine-tune (stage 1) and evaluate (stage 2); spec 002.

Real run (converted weights; data in the WildRF layout DATA/{train,val}/{0_real,1_fake}):
  python -m common.convert --model ladeda9 --src WildRF_LaDeDa.pth --dst ckpt/ladeda_wildrf
  python -m distill.diagnose_teacher --config configs/distill/teacher.py --workdir runs/diag \
    --config.data.root=DATA --config.teacher.paths.wildrf=ckpt/ladeda_wildrf
  python -m distill.train_teacher --config configs/distill/teacher.py --workdir runs/teacher \
    --config.data.root=DATA --config.teacher.paths.wildrf=ckpt/ladeda_wildrf
  python -m distill.evaluate_teacher --config configs/distill/teacher.py:teacher=finetuned --workdir runs/teacher_eval \
    --config.data.root=DATA --config.teacher.paths.finetuned=runs/teacher/teacher_finetuned
Expected: the diagnosis prints AUC, patch-logit statistics and a verdict; fine-tuning logs val/auc each epoch,
reduces the lr when it stalls (x0.1 on the 3rd epoch in a row without a new best, torch's patience 2) and stops
after 5 such epochs; evaluate prints the recommendation.

Fine-tuning follows the seed's train_teacher.py: BCE-with-logits, Adam lr 1e-4 with L2 weight decay 1e-4,
batch 32, up to 50 epochs, reduce-on-plateau and early stopping (patience 5) on val AUC, best checkpoint by
AUC (exported to W/teacher_finetuned), only the last `teacher.unfreeze_blocks` (default 1 = layer4) + fc train.

Arguments: teacher=wildrf|forensynth|finetuned|random|DIR (random: demos/tests), smoke (tiny CPU run on
python -m distill.synthetic data: width-8 LaDeDa at 64 px, random teacher, all stages trainable, 30 steps).
Smoke: python -m distill.synthetic --out /tmp/dd --size 64 && python -m distill.train_teacher \
  --config configs/distill/teacher.py:smoke,teacher=random --workdir /tmp/dd_teacher --config.data.root=/tmp/dd
  (measured: val AUC 0.88 at step 10, 1.0 at step 50, early stop at 100; 1:50 wall on a busy 2-core CPU).
"""

from configs.distill import common


def get_config(arg=None):
  c, a = common.workflow_config(arg)
  if not a.smoke:
    c.batch_size, c.total_steps, c.total_epochs = 32, 0, 50.0
  c.optim.name, c.optim.lr, c.optim.weight_decay = "adam", 1e-4, 1e-4  # torch Adam: L2 on the gradient
  c.optim.schedule, c.optim.clip_grad_norm = "constant", 0.0
  c.plateau.metric, c.plateau.mode, c.plateau.factor, c.plateau.patience = "val/auc", "max", 0.1, 2
  c.early_stop.metric, c.early_stop.mode, c.early_stop.patience = "val/auc", "max", 5
  if a.smoke:
    c.teacher.unfreeze_blocks = -1  # a random-weight teacher has nothing worth freezing
    c.optim.lr = 1e-3
  return c
