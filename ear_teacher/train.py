"""Ear VAE teacher trainer: the loss recipe, evaluation with health checks, recon grids, encoder export.

Entry point: python -m ear_teacher.main --config configs/ear_teacher/default.py --workdir DIR ...
Resume order (common.trainer): DIR/checkpoints > config.init_from (converted DINOv2 into the encoder's
backbone) > scratch. The VGG16 of the perceptual term is a fixed loss network: loaded from
config.perceptual.vgg_path, passed to each step as a constant, never trained or checkpointed.
The best evaluated checkpoint (config.best_metric, val/total) is exported as DIR/encoder_export.
"""

import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from common import augment, checkpoint, data, models, optim, parallel, trainer
from common.models import vgg as vgg_lib
from ear_teacher import losses, model as model_lib
from ear_teacher.prepare_data import open_images

TERMS = ("l1", "perceptual", "ssim", "edge", "kl", "contrastive")


def backbone_freeze_patterns(trainable_blocks: int, depth: int, scan_split: int | None = None) -> tuple[str, ...]:
  """optim.freeze regexes for the DINOv2 backbone: 0 frozen, -1 all trainable, N = last N blocks + norm.

  `scan_split` is None for the unrolled layout (`blocks_i`), else the scanned backbone's `scan_trainable_blocks`:
  its `blocks_frozen` stack must hold exactly the frozen blocks, since a stacked leaf trains whole.
  """
  prefix = "encoder/backbone/"
  if trainable_blocks < 0 or trainable_blocks > depth:
    return ()
  if trainable_blocks == 0:
    return (prefix + ".*",)
  patterns = [prefix + "(cls_token|pos_embed|mask_token|register_tokens|patch_embed/.*)"]
  if trainable_blocks < depth and scan_split is None:
    patterns.append(prefix + f"blocks_({'|'.join(str(i) for i in range(depth - trainable_blocks))})/.*")
  elif trainable_blocks < depth:
    if scan_split != trainable_blocks:
      have = f"stacks its last {scan_split} blocks apart" if 0 < scan_split < depth else "is one stack"
      raise ValueError(f"backbone_trainable_blocks={trainable_blocks}, but the scanned backbone {have} and a stacked "
                       f"parameter trains whole: set model.backbone.trainable_blocks={trainable_blocks} too")
    patterns.append(prefix + "blocks_frozen/.*")
  return tuple(patterns)


def pixel_terms(recon, x, cfg) -> dict:
  """Batch-mean pixel losses with the centre map and focal weighting (scalars)."""
  wmap = losses.spatial_weight_map(x.shape[1], x.shape[2], cfg.center_weight)
  return {"l1": losses.weighted_l1(recon, x, wmap, focal=cfg.focal, gamma=cfg.focal_gamma),
          "ssim": losses.ssim_loss(recon, x), "edge": losses.edge_loss(recon, x, wmap)}


def batch_terms(out, x, cfg, vgg_module, vgg_vars) -> dict:
  """Every loss term as a batch mean (training)."""
  terms = pixel_terms(out["recon"], x, cfg)
  terms["kl"] = losses.kl_divergence(out["mu"], out["logvar"])
  terms["contrastive"] = losses.contrastive_loss(out["mu"])
  if vgg_module is not None:
    terms["perceptual"] = losses.perceptual_loss(vgg_module.apply(vgg_vars, out["recon"]), vgg_module.apply(vgg_vars, x))
  return terms


def per_example_terms(out, x, cfg, vgg_module, vgg_vars, mask) -> dict:
  """Every loss term per example (B,) for exact eval means; `mask` keeps padded rows out of contrastive."""
  recon = out["recon"]
  terms = jax.vmap(lambda r, t: pixel_terms(r[None], t[None], cfg))(recon, x)
  terms["kl"] = -0.5 * jnp.sum(1.0 + out["logvar"] - out["mu"] ** 2 - jnp.exp(out["logvar"]), axis=-1)
  # contrastive: each example's mean |cosine| to the other real examples of its batch
  mu = out["mu"] / (jnp.linalg.norm(out["mu"], axis=-1, keepdims=True) + 1e-8)
  pair = mask[:, None] * mask[None, :] * (1.0 - jnp.eye(mu.shape[0]))
  terms["contrastive"] = jnp.sum(jnp.abs(mu @ mu.T) * pair, -1) / jnp.maximum(jnp.sum(pair, -1), 1.0)
  if vgg_module is not None:
    fr, fx = vgg_module.apply(vgg_vars, recon), vgg_module.apply(vgg_vars, x)
    terms["perceptual"] = sum(jnp.mean(jnp.abs(fr[k] - fx[k]), axis=(1, 2, 3)) for k in fr) / len(fr)
  terms["psnr"], terms["ssim_index"] = losses.psnr(recon, x), losses.ssim(recon, x)
  return terms


def weights_of(cfg_loss, have_vgg: bool) -> dict:
  w = {k: float(cfg_loss[k]) for k in TERMS}
  if not have_vgg:
    w["perceptual"] = 0.0
  return w


def load_vgg(config):
  """(module, variables) of the perceptual VGG16, or (None, None) with a plain log line when not configured."""
  if not config.perceptual.vgg_path:
    logging.warning("perceptual loss OFF: no converted VGG16 (set --config.perceptual.vgg_path to a directory "
                    "made by `python -m common.convert --model vgg16 ...`)")
    return None, None
  _, variables = models.load("vgg16", config.perceptual.vgg_path)
  module = vgg_lib.VGG16(taps=tuple(config.perceptual.taps), dtype=config.perceptual.dtype)
  return module, variables


def save_grid(path, inputs, recons):
  """Row 1: inputs, row 2: reconstructions; returns the uint8 grid."""
  top, bottom = np.concatenate(list(inputs), 1), np.concatenate(list(recons), 1)
  grid = (np.clip(np.concatenate([top, bottom], 0), 0, 1) * 255).round().astype(np.uint8)
  Image.fromarray(grid).save(path)
  return grid


def make_task(config, workdir):
  """Builds the trainer.Task plus (model, sources) for evaluation/export."""
  cfg_m = config.model
  if not config.train_npy or not config.val_npy:
    raise ValueError("set --config.train_npy and --config.val_npy (make synthetic ones with "
                     "python -m ear_teacher.synthetic --out DIR)")
  stages = len(cfg_m.decoder_channels)
  if config.image_size % 14 or config.image_size % 2 ** stages:
    raise ValueError(f"config.image_size={config.image_size} must be a multiple of 14 (DINOv2 patches) and of "
                     f"2**{stages} (decoder upsamplings), e.g. {7 * 2 ** stages}")
  model = model_lib.from_config(cfg_m)
  backbone = model_lib.dinov2.make(cfg_m.backbone.variant, **model.encoder.backbone_overrides)
  freeze = backbone_freeze_patterns(config.backbone_trainable_blocks, backbone.depth,
                                    backbone.scan_trainable_blocks if backbone.scan_layers else None)
  if not config.init_from.path:
    logging.warning("DINOv2 backbone has RANDOM weights: no --config.init_from.path (convert the hub checkpoint "
                    "with `python -m common.convert --model dinov2_%s ...`)", cfg_m.backbone.variant)

  size = config.image_size
  fmt = config.data.format
  train_src, val_src = open_images(config.train_npy, fmt, uint8=True), open_images(config.val_npy, fmt)
  # The host only reads (and resizes, when the file is not at `size`) uint8 images; the random
  # augmentation runs batched inside the step.
  train_tf, val_tf = [data.Resize(size)], [data.Resize(size)]
  aug = config.augment

  def device_transform(batch, rng):
    crop_rng, flip_rng, jitter_rng = jax.random.split(rng, 3)
    x = augment.to_float(batch["image"])
    if aug.crop_pad:
      x = augment.random_crop(x, crop_rng, size, pad=aug.crop_pad)
    if aug.flip:
      x = augment.random_flip(x, flip_rng)
    if aug.brightness or aug.contrast:
      x = augment.brightness_contrast(x, jitter_rng, aug.brightness, aug.contrast)
    return {**batch, "image": x}

  vgg_module, vgg_vars = load_vgg(config)
  weights = weights_of(config.loss, vgg_module is not None)

  def loss_fn(params, batch, ctx):
    x = batch["image"]
    out = model.apply({"params": params}, x, train=True, rngs={"reparam": ctx.rng})
    total, parts = losses.total_loss(batch_terms(out, x, config.loss, vgg_module, ctx.constants), weights)
    return total, (parts, ctx.model_state)

  def per_example(state, batch):
    x = batch["image"]
    out = model.apply({"params": state["params"]}, x, train=False)
    terms = per_example_terms(out, x, config.loss, vgg_module, state["vgg"], batch["mask"])
    terms["total"] = sum(weights[k] * terms[k] for k in TERMS if weights[k])
    return {f"val/{k}": v for k, v in terms.items()}

  recon_fn = jax.jit(lambda params, x: model.apply({"params": params}, x)["recon"])
  placed = {}  # the VGG on the run's mesh, placed at the first evaluation

  def eval_fn(state, step):
    if "vgg" not in placed:
      placed["vgg"] = None if vgg_vars is None else parallel.replicate(vgg_vars, parallel.mesh_of(state))
    local = parallel.local_batch_size(config.batch_size)
    batches = data.eval_batches(val_src, global_batch=config.batch_size, local_batch=local, transforms=val_tf)
    result = trainer.evaluate(per_example, {"params": state["params"], "vgg": placed["vgg"]}, batches)
    check_health(result, state, step)
    return result

  def check_health(result, state, step):
    """The seed's warning signs (spec 000 'What to Watch'), as log warnings, plus a recon grid."""
    kl = result["val/kl"]
    if not cfg_m.ae_mode and kl > config.health.kl_high:
      logging.warning("step %d: KL %.1f > %.0f: regularisation too strong (blur); lower loss.kl", step, kl,
                      config.health.kl_high)
    if not cfg_m.ae_mode and kl < config.health.kl_low:
      logging.warning("step %d: KL %.1f < %.0f: too weak, may memorise", step, kl, config.health.kl_low)
    n = min(config.grid_images, len(val_src))
    x = np.stack([val_tf[0].map(val_src[i])["image"] for i in range(n)])
    recon = np.asarray(parallel.to_host(recon_fn(state["params"], x)))
    spread_in, spread_out = x.std(0).mean(), recon.std(0).mean()
    result["val/recon_spread_ratio"] = float(spread_out / max(spread_in, 1e-8))
    if spread_out < config.health.collapse_ratio * spread_in:
      logging.warning("step %d: reconstructions are collapsing to one image (spread %.4f vs inputs %.4f)",
                      step, spread_out, spread_in)
    if jax.process_index() == 0:
      grid = save_grid(os.path.join(workdir, f"recon_step{step:06d}.png"), x, recon)
      Image.fromarray(grid).save(os.path.join(workdir, "recon_latest.png"))
      result["images/reconstructions"] = grid

  task = trainer.Task(init_variables=lambda rng: model.init({"params": rng, "reparam": rng},
                                                             jnp.zeros((1, size, size, 3)), train=True),
                      loss_fn=loss_fn, train_source=train_src, train_transforms=train_tf,
                      device_transform=device_transform, eval_fn=eval_fn, constants=vgg_vars,
                      derive_config=lambda c: {"optim.freeze": optim.with_frozen(c.optim.freeze, freeze)})
  return task, model, val_src, val_tf


def train_and_evaluate(config, workdir):
  task, _, _, _ = make_task(config, workdir)
  state = trainer.train(config, workdir, task)
  checkpoint.export_best(workdir, config, "ear_teacher_encoder", model_lib.encoder_kwargs(config.model),
                         lambda s: {"params": s["params"]["encoder"]}, os.path.join(workdir, "encoder_export"))
  return state
