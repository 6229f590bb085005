"""The seed's scripts/evaluate_student.py: the student per test subset, beside the teacher, with images/s of both.

    python -m distill.evaluate_student --config configs/distill/student.py:teacher=finetuned \
      --workdir runs/student_eval --config.data.root=DATA \
      --config.teacher.paths.finetuned=runs/teacher/teacher_finetuned \
      --config.student.weights=runs/student/student_export
"""

from common import cli
from distill import evaluate

if __name__ == "__main__":
  cli.run_main(evaluate.evaluate_student)
