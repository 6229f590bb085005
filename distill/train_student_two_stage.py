"""Stage 3, the seed's scripts/train_student_two_stage.py: stage 1 distillation only, stage 2 the combined loss.

    python -m distill.train_student_two_stage --config configs/distill/student.py:teacher=finetuned \
      --workdir runs/student2 --config.data.root=DATA \
      --config.teacher.paths.finetuned=runs/teacher/teacher_finetuned
"""

from common import cli
from distill import train

if __name__ == "__main__":
  cli.run_main(train.train_student_two_stage)
