"""Entry point: ``python main.py [run|prepare|train-m|train-k|examples|figures] [--option value ...]``.

The experiment is configured in ``config.py``; ``python main.py --help`` lists every option.
"""

from config import PROFILES, Config
from unmask.cli import main

if __name__ == "__main__":
    raise SystemExit(main(config_class=Config, profiles=PROFILES))
