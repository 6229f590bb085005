"""The seed's test_gallery.py: gallery enrolment check and probe similarity to the own gallery.

    python -m facerec.check_gallery --config configs/facerec/finetune.py --workdir runs/gallery \
      --config.data.val_root=DATA/val --config.edgeface.weights=runs/ft/edgeface_export \
      --config.dsr.weights=runs/dsr/dsr_export
"""

from common import cli
from facerec import evaluate

if __name__ == "__main__":
  cli.run_main(evaluate.check_gallery)
