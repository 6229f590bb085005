"""The seed's test_pretrained.py: the pretrained EdgeFace alone through the gallery-probe protocol.

    python -m facerec.test_pretrained --config configs/facerec/finetune.py --workdir runs/pretrained \
      --config.data.val_root=DATA/val --config.edgeface.weights=ckpt/edgeface_xs \
      --config.dsr.weights=runs/dsr/dsr_export
"""

from common import config as config_lib
from facerec import evaluate

if __name__ == "__main__":
  config_lib.run_main(evaluate.test_pretrained)
