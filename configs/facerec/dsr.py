"""DSR super-resolution front end: 16x16 VLR faces -> 112x112 for a frozen EdgeFace (spec 004).

Real run:
  python -m facerec.train_dsr --config configs/facerec/dsr.py --workdir runs/dsr \
    --config.data.train_root=DATA/train --config.data.val_root=DATA/val --config.edgeface.weights=ckpt/edgeface_xs
Expected: train/l1 and train/identity (1 - cos between EdgeFace embeddings of SR and HR) fall; watch val/rank_1 of
the VLR -> DSR -> EdgeFace pipeline against the bicubic direct-feed baseline (val_direct/rank_1): on our synthetic
demo the DSR improved the EER but not rank-1 over bicubic (README, facerec). The best DSR is
exported to runs/dsr/dsr_export (python -m facerec.finetune_contrastive --config.dsr.weights=runs/dsr/dsr_export).

Loss = L1(SR, HR) + 0.5 x identity (SR_LRFR's lambda); EDSR-style trunk (64 features, 8 residual blocks) with
sub-pixel upsampling, AdamW 1e-3 (Idiap-LRFR's stage 1 optimiser) with a cosine schedule, 30 epochs, VLR made
on the fly: Gaussian blur sigma 0.5-1.5, area downsampling to 16 px, noise std 0-0.02 (data.degradation).
Arguments: variant=NAME (EdgeFace variant for weights=random), smoke (tiny models, 30 steps:
python -m facerec.train_dsr --config configs/facerec/dsr.py:smoke --workdir /tmp/fr_dsr
--config.data.train_root=/tmp/faces/train --config.data.val_root=/tmp/faces/val --config.edgeface.weights=W,
with W an edgeface_export of a recogniser trained on the same faces).
"""

from configs.facerec import common


def get_config(arg=None):
  c, a = common.workflow_config(arg)
  c.optim.name, c.optim.lr, c.optim.weight_decay = "adamw", 1e-3, 1e-4
  c.optim.schedule, c.optim.warmup_steps, c.optim.clip_grad_norm = "cosine", 100, 1.0
  if a.smoke:
    c.optim.warmup_steps = 3
  else:
    c.batch_size, c.total_steps, c.total_epochs = 64, 0, 30.0
  return c
