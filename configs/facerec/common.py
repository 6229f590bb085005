"""The config sections every facerec command reads (data, edgeface, dsr, finetune, eval), shared by dsr.py and
finetune.py. Imports only common.config and ml_collections."""

import ml_collections

from common import config as config_lib


def workflow_config(arg=None):
  """(config, parsed args) with the data / edgeface / dsr / finetune / eval sections every command reads."""
  a = config_lib.parse_arg(arg, smoke=False, arcface=False, dsr_trainable=False, variant="edgeface_xs_gamma_06")
  c = config_lib.base_config()
  c.data = ml_collections.ConfigDict(dict(
      train_root="", val_root="", format="folder",  # folder | arrayrecord (roots made by facerec.prepare_data)
      image_size=112, resize=False, max_bad_fraction=0.01, gallery_per_subject=3,
      flip=True, eval_seed=0,  # eval probes are degraded with rngs seeded by (eval_seed, image index)
      degradation=dict(vlr_size=16, blur_sigma=(0.5, 1.5), noise_std=(0.0, 0.02), down="area")))
  # weights: a converted EdgeFace directory (python -m common.convert --model edgeface_xs_gamma_06 ...), an
  # edgeface_export of a fine-tuning run, or "random" (demos and tests only).
  # layer_scale_init: the layer-scale gammas of a random EdgeFace (timm's 1e-6 makes every block start as the
  # identity, which a from-scratch CPU demo cannot afford; converted weights are never touched).
  # dtype: compute dtype ("bfloat16" on GPU/TPU) of EdgeFace (and dsr.model.dtype of the DSR); params and the
  # embedding / super-resolved image stay float32.
  c.edgeface = ml_collections.ConfigDict(dict(variant=a.variant, weights="", overrides=dict(), layer_scale_init=1e-6,
                                              dtype="float32"))
  # weights: a dsr_export of facerec.train_dsr, or "random" (an untrained DSR is exactly bicubic upsampling).
  c.dsr = ml_collections.ConfigDict(dict(
      weights="", trainable=a.dsr_trainable, identity_weight=0.5,
      model=dict(in_size=16, out_size=112, features=64, num_blocks=8, dtype="float32")))
  c.finetune = ml_collections.ConfigDict(dict(
      loss="arcface" if a.arcface else "contrastive", temperature=0.07, images_per_subject=4,
      arcface_s=64.0, arcface_m=0.5))
  c.eval = ml_collections.ConfigDict(dict(
      batch_size=64, threshold=0.35, fars=(0.1, 0.01, 0.001),
      gallery_root="", probe_root="",  # evaluate_dataset: separate roots (else data.val_root split 3 / rest)
      finetuned_weights="",  # evaluate_dataset: a second EdgeFace reported beside edgeface.weights
      arcface_head=""))  # compare_arcface: W/arcface_head.npz of an arcface fine-tuning run
  c.best_metric, c.best_mode = "val/rank_1", "max"
  c.log_every_steps, c.eval_every_steps, c.eval_every_epochs = 50, 0, 1.0
  c.ckpt_every_steps, c.ckpt_every_epochs = 0, 1.0
  c.worker_count = 4
  if a.smoke:
    # 4-stage EdgeFace with one block per stage (SDTA blocks in stages 2-4 kept) at 112 px, an 8-block DSR
    # of width 16: CPU seconds per step.
    c.edgeface.overrides = dict(dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), heads=(2, 2, 2, 2), embedding_dim=64)
    c.edgeface.layer_scale_init = 0.1
    c.dsr.model.update(features=16, num_blocks=2)
    c.batch_size, c.eval.batch_size, c.worker_count = 16, 32, 0
    c.total_epochs, c.eval_every_epochs, c.ckpt_every_epochs = 0.0, 0.0, 0.0
    c.total_steps, c.eval_every_steps, c.ckpt_every_steps, c.log_every_steps = 30, 10, 10, 5
  return c, a
