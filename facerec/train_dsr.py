"""Train the DSR super-resolution front end (L1 + identity loss through a frozen EdgeFace).

    python -m facerec.train_dsr --config configs/facerec/dsr.py --workdir runs/dsr \
      --config.data.train_root=DATA/train --config.data.val_root=DATA/val \
      --config.edgeface.weights=ckpt/edgeface_xs
"""

from common import cli
from facerec import train

if __name__ == "__main__":
  cli.run_main(train.train_dsr)
