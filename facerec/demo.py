"""The whole VLR face pipeline on synthetic faces, on CPU: recogniser -> DSR -> contrastive fine-tuning -> report.

    python -m facerec.demo --workdir runs/facerec_demo [--steps 150]

No pretrained EdgeFace can be downloaded here, so step 1 makes one: a small EdgeFace trained from scratch with the
contrastive objective on the synthetic training subjects (probes still bicubic: an untrained DSR is exactly
bicubic upsampling). Step 2 trains the DSR through that frozen recogniser (L1 + identity loss). Step 3 fine-tunes
the recogniser contrastively with the trained DSR frozen in front (the seed's fix). Step 4 evaluates the step-1
model ("pretrained") and the step-3 model ("finetuned") side by side on the val subjects' gallery/probe split,
through DSR, the bicubic direct-feed baseline and HR probes. Everything lands in the workdir.
"""

import os

from absl import app, flags

from common import cli
from configs.facerec import dsr as dsr_config, finetune as finetune_config
from facerec import evaluate, synthetic, train

_WORKDIR = flags.DEFINE_string("workdir", "runs/facerec_demo", "output directory")
_STEPS = flags.DEFINE_integer("steps", 150, "training steps of each of the three stages")
_SUBJECTS = flags.DEFINE_integer("subjects", 16, "synthetic subjects")


def _config(module, arg, data_dir, workdir, steps):
  c = module.get_config(arg)
  c.data.train_root, c.data.val_root = os.path.join(data_dir, "train"), os.path.join(data_dir, "val")
  c.total_steps, c.eval_every_steps, c.ckpt_every_steps = steps, max(steps // 3, 1), max(steps // 3, 1)
  c.optim.lr, c.optim.clip_grad_norm, c.optim.warmup_steps = 2e-3, 1.0, 10
  return c


def main(argv):
  del argv
  cli.quiet_logging()
  workdir = os.path.abspath(_WORKDIR.value)
  data_dir, steps = os.path.join(workdir, "data"), _STEPS.value
  if not os.path.isdir(os.path.join(data_dir, "val")):
    # Nuisances at 0.3 of their full spread: a from-scratch recogniser learns them in minutes on a CPU.
    synthetic.write_dataset(data_dir, subjects=_SUBJECTS.value, images=8, test_subjects=4, eval_images=6,
                            variation=0.3)
  dirs = {k: os.path.join(workdir, k) for k in ("recogniser", "dsr", "finetuned", "report")}

  c = _config(finetune_config, "smoke", data_dir, dirs["recogniser"], steps)
  c.edgeface.weights, c.dsr.weights = "random", "random"
  train.finetune(c, dirs["recogniser"])
  recogniser = os.path.join(dirs["recogniser"], train.EDGEFACE_EXPORT)

  c = _config(dsr_config, "smoke", data_dir, dirs["dsr"], steps)
  c.edgeface.weights = recogniser
  train.train_dsr(c, dirs["dsr"])
  dsr = os.path.join(dirs["dsr"], train.DSR_EXPORT)

  c = _config(finetune_config, "smoke", data_dir, dirs["finetuned"], steps)
  c.edgeface.weights, c.dsr.weights, c.optim.lr = recogniser, dsr, 5e-4  # fine-tuning: a gentler lr
  train.finetune(c, dirs["finetuned"])

  c = _config(finetune_config, "smoke", data_dir, dirs["report"], steps)
  c.edgeface.weights, c.dsr.weights = recogniser, dsr
  c.eval.finetuned_weights = os.path.join(dirs["finetuned"], train.EDGEFACE_EXPORT)
  evaluate.evaluate_dataset(c, dirs["report"])
  print(f"\nlook at: {dirs['report']}/evaluation.json, {dirs['report']}/score_distributions.png, "
        f"and metrics.jsonl / tensorboard/ in {', '.join(dirs[k] for k in ('recogniser', 'dsr', 'finetuned'))}")


if __name__ == "__main__":
  app.run(main)
