"""`make demo`: synthetic ears -> a small ear VAE teacher trained on CPU -> metrics, grid, checkpoint, report.

    python -m ear_teacher.demo --workdir runs/demo [--steps 400]

Runs configs/ear_teacher/default.py:demo (a 2-block ViT-S/14 at 56 px, random DINOv2 weights, no VGG)
on data from ear_teacher.synthetic, then ear_teacher.evaluate. Everything lands in the workdir:
metrics.jsonl, tensorboard/, recon_latest.png, checkpoints/, encoder_export/, feature_report.json.
"""

import json
import os

from absl import app, flags

from common import cli, metrics
from configs.ear_teacher import default
from ear_teacher import evaluate, synthetic, train

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "output directory")
_STEPS = flags.DEFINE_integer("steps", 400, "training steps")


def main(argv):
  del argv
  cli.quiet_logging()
  workdir = os.path.abspath(_WORKDIR.value)
  data_dir = os.path.join(workdir, "data")
  if not os.path.isfile(os.path.join(data_dir, "val_ids.npy")):
    synthetic.main(["--out", data_dir, "--num_identities", "96", "--images_per_identity", "6",
                    "--val_identities", "16", "--size", "64", "--seed", "0"])
  config = default.get_config("demo")
  config.train_npy, config.val_npy = os.path.join(data_dir, "train.npy"), os.path.join(data_dir, "val.npy")
  config.total_steps = _STEPS.value
  train.train_and_evaluate(config, workdir)
  report = evaluate.evaluate(workdir)
  evals = [r for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "val/psnr" in r]
  print("\nval PSNR by eval step: " + ", ".join(f"{r['step']}: {r['val/psnr']:.2f} dB" for r in evals))
  print(f"val SSIM first -> last: {evals[0]['val/ssim_index']:.3f} -> {evals[-1]['val/ssim_index']:.3f}")
  print("feature report:", json.dumps(report["features"], indent=1))
  print(f"\nlook at: {workdir}/recon_latest.png (top: inputs, bottom: reconstructions), "
        f"{workdir}/feature_similarity.png, {workdir}/metrics.jsonl, tensorboard --logdir {workdir}/tensorboard")


if __name__ == "__main__":
  app.run(main)
