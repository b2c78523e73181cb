"""Your experiment configuration: edit ``SETTINGS`` (and ``PROFILES``) here; ``python main.py`` reads this file.

Every option, with its default and what it does, is listed by ``python main.py --help`` and
defined in ``unmask/config.py`` (the schema). Values resolve in this order: unmask's defaults,
then ``SETTINGS`` below, then the profile chosen with ``--profile``, then the command line. The
resolved configuration is printed at the start of every run and saved with its results.

Sizes: pixel budgets (``epsilon``, ``step_size``) are on the paper's 0-255 scale; the code works
on images in [0, 1] and divides by 255 itself.
"""

from unmask.config import PROFILES as BUILT_IN_PROFILES

SETTINGS: dict[str, object] = {
    # "class_set": "cs3-2",                      # cs3-1, cs3-2, cs5-1, cs5-2 (or CS3a, CS3b, CS5a, CS5b)
    # "model": "resnet18",                       # compact, resnet18, resnet50, densenet121, vgg16, resnet101
    # "attacks": ("pgd_linf:8", "mim_l2:300"),   # name:epsilon on the 0-255 scale; ("paper",): the eight
    # "data_dir": "data/unmask", "dataset": "unmask",
}
"""Your defaults: any option of unmask/config.py by its field name."""

PROFILES: dict[str, dict[str, object]] = {
    **BUILT_IN_PROFILES,  # demo (the defaults) and paper (the paper's models and hyper-parameters)
    # "mine": {"class_set": "cs3-1", "epochs": 30},   # python main.py --profile mine
}
"""Named sets of overrides for ``--profile``, applied after SETTINGS."""
