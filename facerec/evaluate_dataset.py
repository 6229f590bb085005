"""The seed's evaluate_dataset.py: gallery-probe evaluation, pretrained vs fine-tuned, DSR vs direct feed.

    python -m facerec.evaluate_dataset --config configs/facerec/finetune.py --workdir runs/eval \
      --config.eval.gallery_root=DATA/train --config.eval.probe_root=DATA/val \
      --config.edgeface.weights=ckpt/edgeface_xs --config.eval.finetuned_weights=runs/ft/edgeface_export \
      --config.dsr.weights=runs/dsr/dsr_export
"""

from common import cli
from facerec import evaluate

if __name__ == "__main__":
  cli.run_main(evaluate.evaluate_dataset)
