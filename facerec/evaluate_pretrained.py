"""The seed's test_pretrained.py: the pretrained EdgeFace alone through the gallery-probe protocol.

    python -m facerec.evaluate_pretrained --config configs/facerec/finetune.py --workdir runs/pretrained \
      --config.data.val_root=DATA/val --config.edgeface.weights=ckpt/edgeface_xs \
      --config.dsr.weights=runs/dsr/dsr_export
"""

from common import cli
from facerec import evaluate

if __name__ == "__main__":
  cli.run_main(evaluate.evaluate_pretrained)
