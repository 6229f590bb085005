"""EdgeFace for very-low-resolution faces: DSR training and EdgeFace fine-tuning, validated by gallery-probe.

    python -m facerec.train_dsr --config configs/facerec/dsr.py --workdir W ...
    python -m facerec.finetune_contrastive --config configs/facerec/finetune.py --workdir W ...

Both run on `common.trainer`. Resume order: W/checkpoints > config.init_from (the converted EdgeFace into
`edgeface` when fine-tuning) > scratch.

* DSR (spec 004's super-resolution front end): the DSR trains, EdgeFace is frozen (a step constant, never
  checkpointed). Loss = L1(SR, HR) + dsr.identity_weight x (1 - cos(E(SR), E(HR))), VLR inputs made on the
  fly by `facerec.data.Degradation` (blur, downsample, noise). Exported to W/dsr_export (`dsr` model dir).
* Fine-tuning, loss=contrastive (the seed's finetune_contrastive.py): P x K batches (finetune.images_per_subject
  images of batch/K subjects); embeddings of DSR(VLR) and of HR images go into one supervised-contrastive
  InfoNCE (temperature 0.07), so the DSR view of a subject is pulled towards its OTHER images at both
  resolutions and pushed from other subjects. DSR frozen unless dsr.trainable. Adam lr 1e-5, 20 epochs.
* Fine-tuning, loss=arcface: ArcFace (s=64, m=0.5) classification of both views over the training subjects.
  The seed's warning: it classifies well and still broke cross-image matching (rank-1 1.9%); it is here
  for comparison and for training a recogniser from scratch on synthetic faces.
Validation is always the gallery-probe protocol (HR gallery of the first 3 images per subject, the rest
as VLR -> DSR -> EdgeFace probes), never in-batch pair similarity: the seed's training metric said 0.999
while gallery matching was 1.9%. Exports: W/edgeface_export (and W/arcface_head.npz for arcface).
"""

import os
import shutil

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from common import checkpoint, config as config_lib, data as common_data, models, parallel, trainer
from facerec import data, dsr as dsr_lib, losses, models as fmodels, protocol

EDGEFACE_EXPORT, DSR_EXPORT, ARCFACE_HEAD = "edgeface_export", "dsr_export", "arcface_head.npz"


# ----------------------------------------------------------------------------------------------
# Config shared by configs/facerec/*.py
# ----------------------------------------------------------------------------------------------
def workflow_config(arg=None):
  """(config, parsed args) with the data / edgeface / dsr / finetune / eval sections every command reads."""
  a = config_lib.parse_arg(arg, smoke=False, arcface=False, dsr_trainable=False, variant="edgeface_xs_gamma_06")
  c = config_lib.base_config()
  c.data = ml_collections.ConfigDict(dict(
      train_root="", val_root="", image_size=112, resize=False, max_bad_fraction=0.01, gallery_per_subject=3,
      flip=True, eval_seed=0,  # eval probes are degraded with rngs seeded by (eval_seed, image index)
      degradation=dict(vlr_size=16, blur_sigma=(0.5, 1.5), noise_std=(0.0, 0.02), down="area")))
  # weights: a converted EdgeFace directory (python -m common.convert --model edgeface_xs_gamma_06 ...), an
  # edgeface_export of a fine-tuning run, or "random" (demos and tests only).
  # layer_scale_init: the layer-scale gammas of a random EdgeFace (timm's 1e-6 makes every block start as the
  # identity, which a from-scratch CPU demo cannot afford; converted weights are never touched).
  c.edgeface = ml_collections.ConfigDict(dict(variant=a.variant, weights="", overrides=dict(), layer_scale_init=1e-6))
  # weights: a dsr_export of facerec.train_dsr, or "random" (an untrained DSR is exactly bicubic upsampling).
  c.dsr = ml_collections.ConfigDict(dict(
      weights="", trainable=a.dsr_trainable, identity_weight=0.5,
      model=dict(in_size=16, out_size=112, features=64, num_blocks=8)))
  c.finetune = ml_collections.ConfigDict(dict(
      loss="arcface" if a.arcface else "contrastive", temperature=0.07, images_per_subject=4,
      arcface_s=64.0, arcface_m=0.5))
  c.eval = ml_collections.ConfigDict(dict(
      batch_size=64, threshold=0.35, fars=(0.1, 0.01, 0.001),
      gallery_root="", probe_root="",  # evaluate_dataset: separate roots (else data.val_root split 3 / rest)
      finetuned_weights="",  # evaluate_dataset: a second EdgeFace reported beside edgeface.weights
      arcface_head=""))  # test_with_arcface: W/arcface_head.npz of an arcface fine-tuning run
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


# ----------------------------------------------------------------------------------------------
# Models and data
# ----------------------------------------------------------------------------------------------
def _module_kwargs(module, **override) -> dict:
  kw = {f: getattr(module, f) for f in module.__dataclass_fields__ if f not in ("parent", "name", "dtype")}
  return {**kw, **override}


def load_edgeface(config, weights: str | None = None):
  """(module taking RGB in [0, 1], variables) from a converted / exported directory or a seeded random init."""
  weights = config.edgeface.weights if weights is None else weights
  if not weights:
    raise ValueError("set --config.edgeface.weights to a converted EdgeFace directory (python -m common.convert "
                     f"--model {config.edgeface.variant} --src edgeface.pt --dst DIR), an edgeface_export, or random")
  if weights == "random":
    if config.edgeface.variant not in fmodels.VARIANTS:
      raise ValueError(f"edgeface.variant={config.edgeface.variant!r}; known: {', '.join(fmodels.VARIANTS)}")
    kwargs = {**fmodels.VARIANTS[config.edgeface.variant], **config.edgeface.overrides}
    module = fmodels.EdgeFace(**kwargs, normalize_input=True)
    size = config.data.image_size
    # jitted: an eager init compiles every op on its own (20 s on CPU for the smoke EdgeFace)
    variables = jax.jit(module.init)(jax.random.key(config.seed + 7), jnp.zeros((1, size, size, 3)))
    gamma = config.edgeface.layer_scale_init
    variables = jax.tree_util.tree_map_with_path(
        lambda path, v: np.full_like(v, gamma) if str(path[-1].key).startswith("gamma") else np.asarray(v), variables)
    return module, variables
  meta = models.read_meta(weights)
  _, variables = models.load(meta["model"], weights)
  module = fmodels.EdgeFace(**{**meta["kwargs"], "normalize_input": True})  # our images are in [0, 1]
  return module, jax.tree.map(np.asarray, variables)


def load_dsr(config, weights: str | None = None):
  """(module, variables) of the DSR: an exported directory or a seeded fresh init ("random": bicubic)."""
  weights = config.dsr.weights if weights is None else weights
  if not weights:
    raise ValueError("set --config.dsr.weights to a DSR export (W/dsr_export of python -m facerec.train_dsr), or "
                     "random (an untrained DSR, which upsamples bicubically)")
  if weights == "random":
    module = dsr_lib.DSR(**config.dsr.model)
    variables = jax.jit(module.init)(jax.random.key(config.seed + 11),
                                     jnp.zeros((1, module.in_size, module.in_size, 3)))
    return module, jax.tree.map(np.asarray, variables)
  module, variables = models.load("dsr", weights)
  return module, jax.tree.map(np.asarray, variables)


def degradation(config) -> data.Degradation:
  d = config.data.degradation
  return data.Degradation(vlr_size=d.vlr_size, blur_sigma=tuple(d.blur_sigma), noise_std=tuple(d.noise_std),
                          down=d.down)


def folder(config, root: str) -> data.SubjectFolder:
  if not root:
    raise ValueError("set --config.data.train_root / --config.data.val_root to folders of <subject>/*.png faces "
                     "(make synthetic ones with python -m facerec.synthetic --out DIR)")
  return data.SubjectFolder(root, image_size=config.data.image_size, resize=config.data.resize,
                            max_bad_fraction=config.data.max_bad_fraction)


def train_transforms(config) -> list:
  tf = [common_data.RandomFlip()] if config.data.flip else []
  return tf + [data.AddVLR(degradation(config))]  # after the flip: the HR/VLR pair stays aligned


# ----------------------------------------------------------------------------------------------
# Gallery-probe evaluation (validation during training and the evaluate commands)
# ----------------------------------------------------------------------------------------------
def embed_folder(edgeface, ef_vars, dsr, dsr_vars, source, config, mesh) -> dict:
  """Embeddings of every image of `source` through three pipelines, in source order:
  hr (the 112 px image), sr (deterministic VLR -> DSR), direct (VLR -> bicubic -> EdgeFace, the baseline)."""
  size = config.data.image_size

  def fn(v, batch):
    out = {"label": batch["label"], "hr": edgeface.apply(v["edgeface"], batch["image"]),
           "direct": edgeface.apply(v["edgeface"], data.upsample_bicubic(batch["vlr"], size))}
    if dsr is not None:
      out["sr"] = edgeface.apply(v["edgeface"], dsr.apply(v["dsr"], batch["vlr"]))
    return out

  variables = {"edgeface": ef_vars, **({"dsr": dsr_vars} if dsr is not None else {})}
  variables = parallel.from_host(variables, parallel.param_sharding(mesh, variables))
  bs = config.eval.batch_size
  batches = common_data.eval_batches(
      source, global_batch=bs, local_batch=parallel.local_batch_size(bs),
      transforms=[data.AddVLRDeterministic(degradation(config), seed=config.data.eval_seed)])
  return trainer.predict(fn, variables, batches, mesh)


def gallery_probe(emb: dict, gallery_idx, probe_idx, config, probe_emb: dict | None = None) -> dict:
  """{pipeline: report} with an HR gallery from `gallery_idx` rows of `emb` and probes from `probe_idx` rows
  of `probe_emb` (default `emb`); pipelines: sr (the DSR pipeline), direct (bicubic baseline), hr (upper bound)."""
  probe_emb = emb if probe_emb is None else probe_emb
  gallery, ids = protocol.build_gallery(emb["hr"], emb["label"], gallery_idx)
  out = {}
  for pipeline in ("sr", "direct", "hr"):
    if pipeline in probe_emb:
      out[pipeline] = protocol.gallery_probe_report(
          gallery, ids, probe_emb[pipeline][probe_idx], probe_emb["label"][probe_idx],
          threshold=config.eval.threshold, fars=tuple(config.eval.fars))
  return out


def _val_eval_fn(config, val_src, mesh, edgeface_of, dsr_of):
  """eval_fn: gallery-probe on the val folder with the state's models; `*_of(state)` give (module, variables)."""
  gallery_idx, probe_idx = data.gallery_probe_split(val_src, config.data.gallery_per_subject)

  def eval_fn(state, step):
    del step
    host = parallel.to_host({"params": state["params"], "model_state": state["model_state"]})
    (ef, ef_vars), (ds, ds_vars) = edgeface_of(host), dsr_of(host)
    emb = embed_folder(ef, ef_vars, ds, ds_vars, val_src, config, mesh)
    reports = gallery_probe(emb, gallery_idx, probe_idx, config)
    result = {f"val/{k}": reports["sr"][k] for k in ("rank_1", "rank_5", "verification_accuracy",
                                                     "genuine_accept_rate", "genuine_mean", "impostor_mean", "eer")}
    result.update({f"val_direct/{k}": reports["direct"][k] for k in ("rank_1", "genuine_mean")})
    result.update({f"val_hr/{k}": reports["hr"][k] for k in ("rank_1", "genuine_mean")})  # HR probes: the ceiling
    return result

  return eval_fn


def _export(workdir: str, config, name: str, kwargs: dict, pick, dst: str) -> dict:
  """Saves `pick(best state)` as a model directory (best by config.best_metric); returns that state."""
  step = checkpoint.best_step(workdir, config.best_metric, config.best_mode)
  state, _ = checkpoint.load_trained_state(workdir, step)
  if jax.process_index() == 0:
    if os.path.exists(dst):
      shutil.rmtree(dst)  # re-exported after every (resumed) run
    models.save(dst, name, kwargs, pick(state))
    logging.info("exported step %d (best %s) to %s", step, config.best_metric, dst)
  return state


# ----------------------------------------------------------------------------------------------
# DSR training
# ----------------------------------------------------------------------------------------------
def train_dsr(config, workdir: str):
  train_src, val_src = folder(config, config.data.train_root), folder(config, config.data.val_root)
  edgeface, ef_vars = load_edgeface(config)
  net = dsr_lib.DSR(**config.dsr.model)
  if config.data.degradation.vlr_size != net.in_size:
    raise ValueError(f"data.degradation.vlr_size={config.data.degradation.vlr_size} but dsr.model.in_size="
                     f"{net.in_size}; set both to the same very-low resolution")
  mesh = parallel.make_mesh()
  weight = config.dsr.identity_weight

  def loss_fn(params, batch, ctx):
    sr = net.apply({"params": params}, batch["vlr"], train=True)
    l1 = jnp.mean(jnp.abs(sr - batch["image"]))
    e_sr, e_hr = edgeface.apply(ctx.constants, sr), edgeface.apply(ctx.constants, batch["image"])
    identity = losses.identity_loss(e_sr, jax.lax.stop_gradient(e_hr))
    return l1 + weight * identity, ({"l1": l1, "identity": identity}, ctx.model_state)

  task = trainer.Task(
      init_variables=lambda rng: net.init(rng, jnp.zeros((1, net.in_size, net.in_size, 3))), loss_fn=loss_fn,
      train_source=train_src, train_transforms=train_transforms(config), constants=ef_vars,
      eval_fn=_val_eval_fn(config, val_src, mesh, lambda host: (edgeface, ef_vars),
                           lambda host: (net, {"params": host["params"]})))
  state = trainer.train(config, workdir, task)
  _export(workdir, config, "dsr", _module_kwargs(net), lambda s: {"params": s["params"]},
          os.path.join(workdir, DSR_EXPORT))
  return state


# ----------------------------------------------------------------------------------------------
# EdgeFace fine-tuning (contrastive, or ArcFace)
# ----------------------------------------------------------------------------------------------
def finetune(config, workdir: str):
  cf = config.finetune
  if cf.loss not in ("contrastive", "arcface"):
    raise ValueError(f"finetune.loss={cf.loss!r}; use contrastive (the seed's fix) or arcface")
  train_src, val_src = folder(config, config.data.train_root), folder(config, config.data.val_root)
  edgeface, ef_vars = load_edgeface(config)
  net, dsr_vars = load_dsr(config)
  trainable_dsr = config.dsr.trainable
  num_classes = len(train_src.subjects)
  emb_dim = edgeface.embedding_dim
  weights = config.edgeface.weights
  if weights != "random" and not config.init_from.path:
    with config.unlocked():  # strict load of the pretrained EdgeFace into its subtree
      config.init_from.path, config.init_from.into = weights, "edgeface"
  mesh = parallel.make_mesh()

  def init_variables(rng):
    size = config.data.image_size
    if weights == "random":  # the seeded init of load_edgeface (with its layer scales)
      params = {"edgeface": jax.tree.map(jnp.asarray, ef_vars["params"])}
    else:  # shapes only: config.init_from loads the weights strictly
      params = {"edgeface": edgeface.init(rng, jnp.zeros((1, size, size, 3)))["params"]}
    if trainable_dsr:
      params["dsr"] = jax.tree.map(jnp.asarray, dsr_vars["params"])  # starts from the given DSR
    if cf.loss == "arcface":  # insightface PartialFC init N(0, 0.01)
      params["arcface"] = {"weight": 0.01 * jax.random.normal(jax.random.fold_in(rng, 1), (num_classes, emb_dim))}
    return {"params": params}

  def loss_fn(params, batch, ctx):
    dsr_params = params["dsr"] if trainable_dsr else ctx.constants["params"]
    sr = net.apply({"params": dsr_params}, batch["vlr"], train=trainable_dsr)
    embed = lambda x: edgeface.apply({"params": params["edgeface"]}, x, train=True)
    e_sr, e_hr = embed(sr), embed(batch["image"])
    labels = batch["label"]
    if cf.loss == "contrastive":
      loss = losses.cross_resolution_infonce(e_sr, e_hr, labels, temperature=cf.temperature)
    else:
      both, both_labels = jnp.concatenate([e_sr, e_hr]), jnp.concatenate([labels, labels])
      loss = losses.arcface_loss(both, params["arcface"]["weight"], both_labels, s=cf.arcface_s, m=cf.arcface_m)
    # The seed's misleading training metric, logged only as a diagnostic: paired SR/HR cosine in the batch.
    paired = jnp.mean(jnp.sum(losses.l2_normalize(e_sr) * losses.l2_normalize(e_hr), -1))
    return loss, ({"paired_cosine": paired}, ctx.model_state)

  order = data.PKOrder(train_src.labels, config.batch_size, cf.images_per_subject)
  task = trainer.Task(
      init_variables=init_variables, loss_fn=loss_fn, train_source=train_src, train_order=order,
      train_transforms=train_transforms(config), constants=None if trainable_dsr else dsr_vars,
      eval_fn=_val_eval_fn(config, val_src, mesh, lambda host: (edgeface, {"params": host["params"]["edgeface"]}),
                           lambda host: (net, {"params": host["params"]["dsr"]} if trainable_dsr else dsr_vars)),
      on_start=lambda state: logging.info("fine-tuning EdgeFace (%s loss) from %s; DSR %s", cf.loss, weights,
                                          "trainable" if trainable_dsr else "frozen"))
  state = trainer.train(config, workdir, task)
  # Saved with the original input convention ([-1, 1]) like converted weights; load_edgeface switches it.
  name = config.edgeface.variant if weights == "random" else models.read_meta(weights)["model"]
  best = _export(workdir, config, name, _module_kwargs(edgeface, normalize_input=False),
                 lambda s: {"params": s["params"]["edgeface"]}, os.path.join(workdir, EDGEFACE_EXPORT))
  if jax.process_index() == 0:
    if trainable_dsr:
      dst = os.path.join(workdir, DSR_EXPORT)
      if os.path.exists(dst):
        shutil.rmtree(dst)
      models.save(dst, "dsr", _module_kwargs(net), {"params": best["params"]["dsr"]})
    if cf.loss == "arcface":
      np.savez(os.path.join(workdir, ARCFACE_HEAD), weight=best["params"]["arcface"]["weight"],
               subjects=np.array(train_src.subjects))
  return state

