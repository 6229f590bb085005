"""Ear VAE teacher (spec 000/001): DINOv2-S/14 + attention encoder -> 1024-d latent -> conv decoder.

Full GPU run (224 px, the balanced recipe, converted DINOv2 and VGG16 weights):
  python -m common.convert --model dinov2_vits14 --src dinov2_vits14_pretrain.pth --dst ckpt/dinov2_s
  python -m common.convert --model vgg16 --src vgg16-397923af.pth --dst ckpt/vgg16
  python -m ear_teacher.main --config configs/ear_teacher/default.py --workdir runs/ear \
    --config.train_npy=data/train.npy --config.val_npy=data/val.npy \
    --config.init_from.path=ckpt/dinov2_s --config.perceptual.vgg_path=ckpt/vgg16
  Expected (spec's hopes, not measured here): KL settles at 100-300, val PSNR > 28 dB after ~40 epochs.

Arguments (comma separated after the file name):
  strategy=balanced|pure_recon|heavy_reg|ae   the seed's loss strategies (KL 5e-6 / 1e-7 / 1e-4 / AE: z=mu, KL 0)
  smoke                                        a tiny CPU run: 1-block ViT-S at 56 px, 6 steps, seconds
  demo                                         the `make demo` run: 2-block ViT-S at 56 px on synthetic ears, CPU minutes
Smoke: python -m ear_teacher.main --config configs/ear_teacher/default.py:smoke --workdir /tmp/ear_smoke \
         --config.train_npy=/tmp/ears/train.npy --config.val_npy=/tmp/ears/val.npy
       (make data with python -m ear_teacher.synthetic --out /tmp/ears); finishes in < 1 min on 2 CPU cores.
"""

import ml_collections

from common import config as config_lib

STRATEGIES = {  # KL weight, AE mode (spec 000 "Comparison", spec 001 "Option B")
    "balanced": (5e-6, False),
    "pure_recon": (1e-7, False),
    "heavy_reg": (1e-4, False),
    "ae": (0.0, True),
}


def get_config(arg=None):
  a = config_lib.parse_arg(arg, strategy="balanced", smoke=False, demo=False)
  if a.strategy not in STRATEGIES:
    raise ValueError(f"strategy={a.strategy!r}; choose from {sorted(STRATEGIES)}")
  c = config_lib.base_config()
  c.train_npy, c.val_npy = "", ""  # (N,H,W,3) or (N,H,W) uint8/float arrays (record dirs with data.format)
  # npy | arrayrecord (train_npy / val_npy are then directories made by python -m ear_teacher.prepare_data)
  c.data = ml_collections.ConfigDict(dict(format="npy"))
  c.val_ids_npy = ""  # optional identity per val image, for the feature-quality report
  c.image_size = 224
  c.batch_size = 32
  c.total_steps, c.total_epochs = 0, 100.0
  c.log_every_steps = 50
  c.eval_every_steps, c.eval_every_epochs = 0, 1.0
  c.ckpt_every_steps, c.ckpt_every_epochs = 0, 1.0
  c.best_metric, c.best_mode = "val/total", "min"
  c.worker_count = 4

  # Which DINOv2 parameters train: 0 = frozen, -1 = all, N = the last N blocks (+ final norm).
  c.backbone_trainable_blocks = 0
  c.model = ml_collections.ConfigDict(dict(
      # depth/registers 0: the variant's own. scan_layers: nn.scan over the blocks (ViT-g compiles ~20x faster;
      # params stacked, converted checkpoints restacked on load). remat: none | full | dots_saveable, what the
      # backward keeps (matters only when blocks train). trainable_blocks is backbone_trainable_blocks (one
      # value): it splits a scanned backbone into frozen and trained stacks.
      backbone=dict(variant="vits14", depth=0, registers=0, scan_layers=False, remat="none",
                    trainable_blocks=c.get_ref("backbone_trainable_blocks")),
      latent_dim=1024, encoder_hidden=1024, encoder_heads=8,
      decoder_channels=(512, 256, 128, 64, 32),  # one 2x upsampling each: image_size = 7 * 2**5
      image_size=c.get_ref("image_size"), ae_mode=STRATEGIES[a.strategy][1], dtype="float32"))
  c.init_from.path, c.init_from.into = "", "encoder/backbone"  # a converted dinov2_* directory

  c.optim.name, c.optim.lr, c.optim.weight_decay = "adamw", 3e-4, 1e-4
  c.optim.schedule, c.optim.warmup_epochs, c.optim.clip_grad_norm = "cosine", 2.0, 1.0

  c.loss = ml_collections.ConfigDict(dict(
      l1=1.0, perceptual=1.0, ssim=0.4, edge=0.1, kl=STRATEGIES[a.strategy][0], contrastive=0.1,
      center_weight=3.0, focal=True, focal_gamma=1.0))
  # VGG16 perceptual term: a converted vgg16 directory; empty -> the term is off (and the log says so).
  c.perceptual = ml_collections.ConfigDict(dict(vgg_path="", taps=("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
                                                dtype="float32"))
  c.augment = ml_collections.ConfigDict(dict(flip=True, crop_pad=8, brightness=0.1, contrast=0.1))
  c.health = ml_collections.ConfigDict(dict(kl_high=500.0, kl_low=50.0, collapse_ratio=0.1))
  c.grid_images = 8

  if a.smoke or a.demo:
    c.image_size = 56
    c.model.backbone.depth = 1 if a.smoke else 2
    c.model.latent_dim, c.model.encoder_hidden, c.model.encoder_heads = 64, 128, 4
    c.model.decoder_channels = (64, 32, 16) if a.smoke else (128, 64, 32)
    c.batch_size, c.worker_count = 16, 0
    c.total_epochs, c.eval_every_epochs, c.ckpt_every_epochs, c.optim.warmup_epochs = 0.0, 0.0, 0.0, 0.0
    c.total_steps = 6 if a.smoke else 400
    c.eval_every_steps = c.ckpt_every_steps = 3 if a.smoke else 100
    c.log_every_steps = 2 if a.smoke else 20
    c.optim.lr, c.optim.warmup_steps = 1e-3, 2 if a.smoke else 20
    c.backbone_trainable_blocks = -1  # random-weight backbone on CPU: let it learn
    c.augment.crop_pad = 2 if a.smoke else 4
  return c
