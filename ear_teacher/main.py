"""python -m ear_teacher.main --config configs/ear_teacher/default.py[:arg] --workdir DIR [--config.k=v ...]"""

from common import cli
from ear_teacher import train

if __name__ == "__main__":
  cli.run_main(train.train_and_evaluate)
