"""Stage 3, the seed's scripts/train_student.py: single-stage student training (BCE + patch-map distillation).

    python -m distill.train_student --config configs/distill/student.py:teacher=finetuned --workdir runs/student \
      --config.data.root=DATA --config.teacher.paths.finetuned=runs/teacher/teacher_finetuned
"""

from common import cli
from distill import train

if __name__ == "__main__":
  cli.run_main(train.train_student)
