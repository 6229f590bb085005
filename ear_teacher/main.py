"""python -m ear_teacher.main --config configs/ear_teacher/default.py[:arg] --workdir DIR [--config.k=v ...]"""

from common import config as config_lib
from ear_teacher import train

if __name__ == "__main__":
  config_lib.run_main(train.train_and_evaluate)
