"""The seed's check_subject_overlap.py: subjects shared by the gallery and probe roots.

    python -m facerec.check_subject_overlap --config configs/facerec/finetune.py --workdir runs/overlap \
      --config.eval.gallery_root=DATA/train --config.eval.probe_root=DATA/val
"""

from common import cli
from facerec import evaluate

if __name__ == "__main__":
  cli.run_main(evaluate.check_subject_overlap)
