"""The seed's analyze_scores.py: genuine/impostor score distributions, EER and a threshold sweep.

    python -m facerec.analyze_scores --config configs/facerec/finetune.py --workdir runs/scores \
      --config.data.val_root=DATA/val --config.edgeface.weights=runs/ft/edgeface_export \
      --config.dsr.weights=runs/dsr/dsr_export
"""

from common import cli
from facerec import evaluate

if __name__ == "__main__":
  cli.run_main(evaluate.analyze_scores)
