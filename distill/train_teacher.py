"""Stage 1, the seed's scripts/train_teacher.py: fine-tune the teacher (BCE, last N stages, early stopping on val AUC).

    python -m distill.train_teacher --config configs/distill/teacher.py --workdir runs/teacher \
      --config.data.root=DATA --config.teacher.paths.wildrf=ckpt/ladeda_wildrf
"""

from common import cli
from distill import train

if __name__ == "__main__":
  cli.run_main(train.train_teacher)
