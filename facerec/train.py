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

import functools
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from common import augment, checkpoint, data as common_data, models, parallel, trainer
from facerec import augment as faugment, data, dsr as dsr_lib, losses, models as fmodels, protocol

EDGEFACE_EXPORT, DSR_EXPORT, ARCFACE_HEAD = "edgeface_export", "dsr_export", "arcface_head.npz"


# ----------------------------------------------------------------------------------------------
# Models and data
# ----------------------------------------------------------------------------------------------
def _random_edgeface(config):
  if config.edgeface.variant not in fmodels.VARIANTS:
    raise ValueError(f"edgeface.variant={config.edgeface.variant!r}; known: {', '.join(fmodels.VARIANTS)}")
  kwargs = {**fmodels.VARIANTS[config.edgeface.variant], **config.edgeface.overrides}
  return fmodels.EdgeFace(**kwargs, normalize_input=True, dtype=config.edgeface.get("dtype", "float32"))


def load_edgeface(config, weights: str | None = None):
  """(module taking RGB in [0, 1], variables) from a converted / exported directory or a seeded random init."""
  weights = config.edgeface.weights if weights is None else weights
  if not weights:
    raise ValueError("set --config.edgeface.weights to a converted EdgeFace directory (python -m common.convert "
                     f"--model {config.edgeface.variant} --src edgeface.pt --dst DIR), an edgeface_export, or random")
  module = _random_edgeface(config) if weights == "random" else None
  size = config.data.image_size
  # Saved EdgeFaces take [-1, 1] like the release; our images are in [0, 1], so normalise inside the module.
  module, variables = models.load_or_init(weights, module, (1, size, size, 3), config.seed + 7,
                                          names=tuple(fmodels.VARIANTS), normalize_input=True,
                                          dtype=config.edgeface.get("dtype", "float32"))
  if weights == "random":
    gamma = config.edgeface.layer_scale_init
    variables = jax.tree_util.tree_map_with_path(
        lambda path, v: np.full_like(v, gamma) if str(path[-1].key).startswith("gamma") else v, variables)
  return module, variables


def load_dsr(config, weights: str | None = None):
  """(module, variables) of the DSR: an exported directory or a seeded fresh init ("random": bicubic)."""
  weights = config.dsr.weights if weights is None else weights
  if not weights:
    raise ValueError("set --config.dsr.weights to a DSR export (W/dsr_export of python -m facerec.train_dsr), or "
                     "random (an untrained DSR, which upsamples bicubically)")
  module = dsr_lib.DSR(**config.dsr.model)
  return models.load_or_init(weights, module, (1, module.in_size, module.in_size, 3), config.seed + 11,
                             names=("dsr",), dtype=config.dsr.model.get("dtype", "float32"))


def degradation(config) -> data.Degradation:
  d = config.data.degradation
  return data.Degradation(vlr_size=d.vlr_size, blur_sigma=tuple(d.blur_sigma), noise_std=tuple(d.noise_std),
                          down=d.down)


def folder(config, root: str) -> data.SubjectFolder:
  if not root:
    raise ValueError("set --config.data.train_root / --config.data.val_root to folders of <subject>/*.png faces "
                     "(make synthetic ones with python -m facerec.synthetic --out DIR)")
  if config.data.format == "arrayrecord":
    from facerec import prepare_data  # pylint: disable=import-outside-toplevel
    source = prepare_data.subject_records(root)
    if source.image_size != config.data.image_size:
      raise ValueError(f"{root} holds {source.image_size} px faces but data.image_size={config.data.image_size}; "
                       f"prepare it with --image_size {config.data.image_size} or set --config.data.image_size")
    return source
  if config.data.format != "folder":
    raise ValueError(f"data.format={config.data.format!r}; use folder or arrayrecord")
  return data.SubjectFolder(root, image_size=config.data.image_size, resize=config.data.resize,
                            max_bad_fraction=config.data.max_bad_fraction)


def train_transforms(config) -> list:
  """The host half of training: decoded faces as uint8 (the device half is `device_transform`)."""
  return [common_data.ToUint8()]


def device_transform(config):
  """Batched in the step: [flip] the HR face, then degrade it to its VLR probe (blur, down-sample, noise) with
  a fresh draw per example, as `data.AddVLR` does on the host; the flip comes first so the pair stays aligned."""
  deg = degradation(config)

  def transform(batch, rng):
    flip_rng, vlr_rng = jax.random.split(rng)
    hr = augment.to_float(batch["image"])
    if config.data.flip:
      hr = augment.random_flip(hr, flip_rng)
    return {**batch, "image": hr, "vlr": faugment.degrade(hr, vlr_rng, deg)}

  return transform


# ----------------------------------------------------------------------------------------------
# Gallery-probe evaluation (validation during training and the evaluate commands)
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _embed_fn(edgeface, dsr, size: int):
  """One function per model pair, so trainer.predict compiles it once per run, not per evaluation."""
  def fn(v, batch):
    out = {"label": batch["label"], "hr": edgeface.apply(v["edgeface"], batch["image"]),
           "direct": edgeface.apply(v["edgeface"], data.upsample_bicubic(batch["vlr"], size))}
    if dsr is not None:
      out["sr"] = edgeface.apply(v["edgeface"], dsr.apply(v["dsr"], batch["vlr"]))
    return out
  return fn


def embed_folder(edgeface, ef_vars, dsr, dsr_vars, source, config) -> dict:
  """Embeddings of every image of `source` through three pipelines, in source order:
  hr (the 112 px image), sr (deterministic VLR -> DSR), direct (VLR -> bicubic -> EdgeFace, the baseline).
  The variables are on the devices (a train state's, or placed with `parallel.replicate`)."""
  variables = {"edgeface": ef_vars, **({"dsr": dsr_vars} if dsr is not None else {})}
  bs = config.eval.batch_size
  batches = common_data.eval_batches(
      source, global_batch=bs, local_batch=parallel.local_batch_size(bs),
      transforms=[data.AddVLRDeterministic(degradation(config), seed=config.data.eval_seed)])
  return trainer.predict(_embed_fn(edgeface, dsr, config.data.image_size), variables, batches)


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


def _val_eval_fn(config, val_src, edgeface_of, dsr_of):
  """eval_fn: gallery-probe on the val folder with the state's models. `*_of(state, place)` give (module,
  device variables); `place(name, host_tree)` puts a frozen model on the run's mesh once."""
  gallery_idx, probe_idx = data.gallery_probe_split(val_src, config.data.gallery_per_subject)
  placed = {}

  def eval_fn(state, step):
    del step

    def place(name, tree):
      if name not in placed:
        placed[name] = parallel.replicate(tree, parallel.mesh_of(state))
      return placed[name]

    (ef, ef_vars), (ds, ds_vars) = edgeface_of(state, place), dsr_of(state, place)
    emb = embed_folder(ef, ef_vars, ds, ds_vars, val_src, config)
    reports = gallery_probe(emb, gallery_idx, probe_idx, config)
    result = {f"val/{k}": reports["sr"][k] for k in ("rank_1", "rank_5", "verification_accuracy",
                                                     "genuine_accept_rate", "genuine_mean", "impostor_mean", "eer")}
    result.update({f"val_direct/{k}": reports["direct"][k] for k in ("rank_1", "genuine_mean")})
    result.update({f"val_hr/{k}": reports["hr"][k] for k in ("rank_1", "genuine_mean")})  # HR probes: the ceiling
    return result

  return eval_fn


# ----------------------------------------------------------------------------------------------
# DSR training
# ----------------------------------------------------------------------------------------------
def train_sources(config):
  """(train folder, val folder), checked."""
  return folder(config, config.data.train_root), folder(config, config.data.val_root)


def dsr_task(config, train_src, val_src) -> trainer.Task:
  """The DSR trains through a frozen EdgeFace (a step constant): L1(SR, HR) + identity loss."""
  edgeface, ef_vars = load_edgeface(config)
  net = dsr_lib.DSR(**config.dsr.model)
  if config.data.degradation.vlr_size != net.in_size:
    raise ValueError(f"data.degradation.vlr_size={config.data.degradation.vlr_size} but dsr.model.in_size="
                     f"{net.in_size}; set both to the same very-low resolution")
  weight = config.dsr.identity_weight

  def loss_fn(params, batch, ctx):
    sr = net.apply({"params": params}, batch["vlr"], train=True)
    l1 = jnp.mean(jnp.abs(sr - batch["image"]))
    e_sr, e_hr = edgeface.apply(ctx.constants, sr), edgeface.apply(ctx.constants, batch["image"])
    identity = losses.identity_loss(e_sr, jax.lax.stop_gradient(e_hr))
    return l1 + weight * identity, ({"l1": l1, "identity": identity}, ctx.model_state)

  return trainer.Task(
      init_variables=lambda rng: net.init(rng, jnp.zeros((1, net.in_size, net.in_size, 3))), loss_fn=loss_fn,
      train_source=train_src, train_transforms=train_transforms(config), device_transform=device_transform(config),
      constants=ef_vars,
      eval_fn=_val_eval_fn(config, val_src, lambda state, place: (edgeface, place("edgeface", ef_vars)),
                           lambda state, place: (net, {"params": state["params"]})))


def train_dsr(config, workdir: str):
  state = trainer.train(config, workdir, dsr_task(config, *train_sources(config)))
  checkpoint.export_best(workdir, config, "dsr", models.module_kwargs(dsr_lib.DSR(**config.dsr.model)),
                         lambda s: {"params": s["params"]}, os.path.join(workdir, DSR_EXPORT))
  return state


# ----------------------------------------------------------------------------------------------
# EdgeFace fine-tuning (contrastive, or ArcFace)
# ----------------------------------------------------------------------------------------------
def finetune_task(config, train_src, val_src) -> trainer.Task:
  """EdgeFace (and the DSR when dsr.trainable) on P x K batches: contrastive over DSR(VLR) and HR, or ArcFace."""
  cf = config.finetune
  if cf.loss not in ("contrastive", "arcface"):
    raise ValueError(f"finetune.loss={cf.loss!r}; use contrastive (the seed's fix) or arcface")
  edgeface, ef_vars = load_edgeface(config)
  net, dsr_vars = load_dsr(config)
  trainable_dsr = config.dsr.trainable
  num_classes = len(train_src.subjects)
  emb_dim = edgeface.embedding_dim
  weights = config.edgeface.weights

  def derive_config(c):  # a strict load of the pretrained EdgeFace into its subtree
    if weights == "random" or c.init_from.path:
      return {}
    return {"init_from.path": weights, "init_from.into": "edgeface"}

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

  def dsr_of(state, place):
    return net, ({"params": state["params"]["dsr"]} if trainable_dsr else place("dsr", dsr_vars))

  order = data.PKOrder(train_src.labels, config.batch_size, cf.images_per_subject)
  return trainer.Task(
      init_variables=init_variables, loss_fn=loss_fn, train_source=train_src, train_order=order,
      train_transforms=train_transforms(config), device_transform=device_transform(config),
      constants=None if trainable_dsr else dsr_vars,
      eval_fn=_val_eval_fn(config, val_src, lambda state, place: (edgeface, {"params": state["params"]["edgeface"]}),
                           dsr_of),
      on_start=lambda state: logging.info("fine-tuning EdgeFace (%s loss) from %s; DSR %s", cf.loss, weights,
                                          "trainable" if trainable_dsr else "frozen"),
      derive_config=derive_config)


def finetune(config, workdir: str):
  train_src, val_src = train_sources(config)
  task = finetune_task(config, train_src, val_src)
  state = trainer.train(config, workdir, task)
  # Saved with the original input convention ([-1, 1]) like converted weights; load_edgeface switches it.
  weights = config.edgeface.weights
  name = config.edgeface.variant if weights == "random" else models.read_meta(weights)["model"]
  edgeface = _random_edgeface(config) if weights == "random" else models.module_of(weights)
  best = checkpoint.export_best(workdir, config, name, models.module_kwargs(edgeface, normalize_input=False),
                                lambda s: {"params": s["params"]["edgeface"]}, os.path.join(workdir, EDGEFACE_EXPORT))
  if jax.process_index() == 0:
    if config.dsr.trainable:
      dsr = dsr_lib.DSR(**config.dsr.model) if config.dsr.weights == "random" else models.module_of(config.dsr.weights)
      models.save(os.path.join(workdir, DSR_EXPORT), "dsr", models.module_kwargs(dsr), {"params": best["params"]["dsr"]},
                  overwrite=True)
    if config.finetune.loss == "arcface":
      np.savez(os.path.join(workdir, ARCFACE_HEAD), weight=best["params"]["arcface"]["weight"],
               subjects=np.array(train_src.subjects))
  return state

