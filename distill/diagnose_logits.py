"""The seed's scripts/diagnose_logits.py: teacher vs aligned student logit scales, MSE, verdicts.

    python -m distill.diagnose_logits --config configs/distill/student.py:teacher=finetuned --workdir runs/logits \
      --config.data.root=DATA \
      --config.teacher.paths.finetuned=runs/teacher/teacher_finetuned [--config.student.weights=runs/student/student_export]
"""

from common import cli
from distill import evaluate

if __name__ == "__main__":
  cli.run_main(evaluate.diagnose_logits)
