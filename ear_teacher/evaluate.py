"""Evaluate a trained ear teacher: PSNR/SSIM on val and the seed's feature-quality report (spec 000).

    python -m ear_teacher.evaluate --workdir runs/ear [--step N] [--val_npy V --val_ids_npy IDS]

Reads DIR/config.json and the checkpoint, then writes DIR/feature_report.json and
DIR/feature_similarity.png. From the encoder's mu (cosine similarity):
  different_ears  mean over pairs of images of different ears      (good: < 0.3)
  same_ear_aug    an image vs an augmented copy of itself           (good: > 0.9)
  similar_ears    different images of the same ear (pose/lighting)  (good: 0.4-0.7)
Without identity labels, different_ears is over all pairs and similar_ears is omitted.
"""

import argparse
import json
import os
import sys

import jax
import numpy as np

from common import checkpoint, config as config_lib, data, parallel, plots, trainer
from ear_teacher import losses, model as model_lib
from ear_teacher.prepare_data import open_images


def load_config(workdir: str):
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found; pass the --workdir of an ear_teacher.main run")
  return config_lib.from_json(path)


def cosine_matrix(feats: np.ndarray) -> np.ndarray:
  f = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-8)
  return f @ f.T


def similarity_report(mu: np.ndarray, mu_aug: np.ndarray, ids: np.ndarray | None) -> tuple[dict, dict]:
  """(summary, raw similarity arrays) for the three checks."""
  sim = cosine_matrix(mu)
  off_diag = ~np.eye(len(mu), dtype=bool)
  same_id = (ids[:, None] == ids[None, :]) if ids is not None else np.zeros_like(off_diag)
  raw = {"different_ears": sim[off_diag & ~same_id],
         "same_ear_aug": np.sum(mu / np.linalg.norm(mu, axis=1, keepdims=True) *
                                mu_aug / np.linalg.norm(mu_aug, axis=1, keepdims=True), axis=1)}
  if ids is not None and (off_diag & same_id).any():
    raw["similar_ears"] = sim[off_diag & same_id]
  targets = {"different_ears": "< 0.3", "same_ear_aug": "> 0.9", "similar_ears": "0.4-0.7"}
  summary = {k: {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size), "target": targets[k]}
             for k, v in raw.items()}
  return summary, raw


def evaluate(workdir: str, step: int | None = None, val_npy: str = "", val_ids_npy: str = "") -> dict:
  config = load_config(workdir)
  params, step = checkpoint.load_trained_params(workdir, step)
  model = model_lib.from_config(config.model)
  size = config.image_size
  val_path = val_npy or config.val_npy
  fmt = config.get("data", {}).get("format", "npy")
  source = open_images(val_path, fmt)
  ids_path = val_ids_npy or config.get("val_ids_npy", "") or os.path.join(os.path.dirname(val_path), "val_ids.npy")
  ids = np.load(ids_path) if os.path.isfile(ids_path) else getattr(source, "ids", None)  # records carry their ids
  if ids is not None and len(ids) != len(source):
    raise ValueError(f"{ids_path}: {len(ids)} ids for {len(source)} images in {val_path}")

  mesh = parallel.make_mesh()
  params = parallel.replicate(params, mesh)

  def per_example(state, batch):
    out = model.apply({"params": state}, batch["image"])
    return {"psnr": losses.psnr(out["recon"], batch["image"]), "ssim": losses.ssim(out["recon"], batch["image"])}

  batch = config.batch_size
  local = parallel.local_batch_size(batch)
  resize = data.Resize(size)
  quality = trainer.evaluate(per_example, params, data.eval_batches(
      source, global_batch=batch, local_batch=local, transforms=[resize]))

  # Replicated output: every process gets all of mu (an all-gather), so slicing by the mask is local.
  encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode)[0],
                   out_shardings=parallel.replicated(mesh))
  # A fixed, deterministic augmentation: flip + crop-and-resize + brightness/contrast jitter.
  augment = [data.RandomFlip(1.0), data.RandomCrop(size - size // 8), data.Resize(size),
             data.RandomBrightnessContrast(0.1, 0.1)]

  def features(aug: bool) -> np.ndarray:
    out = []
    for b in data.eval_batches(source, global_batch=batch, local_batch=local, transforms=[resize]):
      images = b["image"]
      if aug:
        rng = np.random.default_rng(0)
        images = np.stack([_apply(augment, {"image": im}, rng)["image"] for im in images])
      out.append(parallel.to_host(encode(params, parallel.to_global({"x": images}, mesh)["x"])))
    # Batches follow the global example order and padding only fills the tail: the first N rows are real.
    return np.concatenate(out)[:len(source)]

  summary, raw = similarity_report(features(False), features(True), ids)
  report = {"step": step, "val_npy": os.path.abspath(val_path), "num_images": len(source),
            "identity_labels": ids is not None, "val_psnr": quality["psnr"], "val_ssim": quality["ssim"],
            "features": summary}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "feature_report.json"), "w") as f:
      json.dump(report, f, indent=2)
    plots.histogram_png(os.path.join(workdir, "feature_similarity.png"), raw, value_range=(-1.0, 1.0),
                        title="cosine similarity of encoder mu")
  return report


def _apply(transforms, element, rng):
  for t in transforms:
    element = t.random_map(element, rng) if hasattr(t, "random_map") else t.map(element)
  return element


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--step", type=int, default=None)
  parser.add_argument("--val_npy", default="")
  parser.add_argument("--val_ids_npy", default="")
  args = parser.parse_args(argv)
  try:
    report = evaluate(args.workdir, args.step, args.val_npy, args.val_ids_npy)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(report, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
