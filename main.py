"""Entry point: ``python main.py [command] [--option value ...]`` (``python main.py --help`` lists the commands).

The experiment is configured in ``config.py`` (``SETTINGS``, ``PROFILES``); ``python main.py --help``
lists every option.
"""

from config import PROFILES, SETTINGS
from unmask.cli import main

if __name__ == "__main__":
    raise SystemExit(main(settings=SETTINGS, profiles=PROFILES))
