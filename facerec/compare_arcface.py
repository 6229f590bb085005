"""The seed's test_with_arcface.py: would keeping the ArcFace head help DSR probes?

    python -m facerec.compare_arcface --config configs/facerec/finetune.py --workdir runs/arcface \
      --config.data.val_root=DATA/val --config.edgeface.weights=runs/ft_arc/edgeface_export \
      --config.eval.arcface_head=runs/ft_arc/arcface_head.npz --config.dsr.weights=runs/dsr/dsr_export
"""

from common import cli
from facerec import evaluate

if __name__ == "__main__":
  cli.run_main(evaluate.compare_arcface)
