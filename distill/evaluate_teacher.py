"""Stage 2, the seed's scripts/evaluate_teacher.py: the fine-tuned teacher's AUC and whether to distil.

    python -m distill.evaluate_teacher --config configs/distill/teacher.py:teacher=finetuned \
      --workdir runs/teacher_eval --config.data.root=DATA \
      --config.teacher.paths.finetuned=runs/teacher/teacher_finetuned
"""

from common import cli
from distill import evaluate

if __name__ == "__main__":
  cli.run_main(evaluate.evaluate_teacher)
