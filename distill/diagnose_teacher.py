"""Stage 0, the seed's scripts/diagnose_teacher.py: is the pretrained teacher informative on this data?

    python -m distill.diagnose_teacher --config configs/distill/teacher.py --workdir runs/diag \
      --config.data.root=DATA --config.teacher.paths.wildrf=ckpt/ladeda_wildrf
"""

from common import cli
from distill import evaluate

if __name__ == "__main__":
  cli.run_main(evaluate.diagnose_teacher)
