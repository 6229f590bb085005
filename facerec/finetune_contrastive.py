"""The seed's finetune_contrastive.py: fine-tune EdgeFace on P x K contrastive batches (or ArcFace).

    python -m facerec.finetune_contrastive --config configs/facerec/finetune.py --workdir runs/ft \
      --config.data.train_root=DATA/train --config.data.val_root=DATA/val \
      --config.edgeface.weights=ckpt/edgeface_xs --config.dsr.weights=runs/dsr/dsr_export
"""

from common import cli
from facerec import train

if __name__ == "__main__":
  cli.run_main(train.finetune)
