"""EdgeFace fine-tuning for very-low-resolution probes (spec 004): contrastive by default, ArcFace as an option.

Real run (converted EdgeFace, a DSR trained with configs/facerec/dsr.py, faces as root/<subject>/*.png at 112):
  python -m common.convert --model edgeface_xs_gamma_06 --src edgeface_xs_gamma_06.pt --dst ckpt/edgeface_xs
  python -m facerec.finetune_contrastive --config configs/facerec/finetune.py --workdir runs/ft \
    --config.data.train_root=DATA/train --config.data.val_root=DATA/val \
    --config.edgeface.weights=ckpt/edgeface_xs --config.dsr.weights=runs/dsr/dsr_export
Expected: val/rank_1 (gallery-probe: HR gallery of 3 images per subject, VLR -> DSR -> EdgeFace probes) rises
over the pretrained model's and the direct-feed baseline (val_direct/rank_1); the best model is exported to
runs/ft/edgeface_export. Compare with python -m facerec.evaluate_dataset (see its docstring).

The seed's settings: P x K batches of 16 = 4 subjects x images_per_subject 4, supervised-contrastive InfoNCE at
temperature 0.07 over DSR(VLR) and HR embeddings, Adam lr 1e-5, 20 epochs, DSR frozen.
Arguments: arcface (ArcFace s=64 m=0.5 classification instead; the seed's WARNING: it reached 0.999 paired
similarity and 36.9% top-5 in training but 1.9% gallery accuracy, because it classifies HR images and never asks
DSR outputs to match other images of the person: use it to compare, or to train a recogniser from scratch),
dsr_trainable (train the DSR jointly), variant=NAME (EdgeFace variant for weights=random), smoke (tiny EdgeFace
at 112 px, 30 steps: python -m facerec.finetune_contrastive --config configs/facerec/finetune.py:smoke \
--workdir /tmp/fr_ft --config.data.train_root=/tmp/faces/train --config.data.val_root=/tmp/faces/val \
--config.edgeface.weights=random --config.dsr.weights=random; make the data with python -m facerec.synthetic
--out /tmp/faces --variation 0.5; from scratch, val/rank_1 rises noisily: 0.41 -> 0.71 over 80 steps with 8 subjects
at lr 2e-3 + cosine + clipping in tests/test_facerec_workflow.py, 0.35 -> 0.67 over 100 steps in facerec.demo).
"""

from configs.facerec import common


def get_config(arg=None):
  c, a = common.workflow_config(arg)
  c.optim.name, c.optim.lr, c.optim.weight_decay = "adam", 1e-5, 0.0
  c.optim.schedule, c.optim.clip_grad_norm = "constant", 0.0
  if a.smoke:
    c.optim.lr = 2e-3  # from scratch in 30 steps
  else:
    c.batch_size, c.total_steps, c.total_epochs = 16, 0, 20.0
  return c
