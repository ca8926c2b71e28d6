"""Where the commands' configs live, the resolvers they use, and what every CLI shares.

The configs are package data (src/usedddp/configs, also reachable as the repository's top-level
configs/ link), so an installed wheel finds them as an editable checkout does.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from omegaconf import OmegaConf

from usedddp.assets import DEMO_ROOT

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# Overrides whose values are paths. A path holding '=' (Lightning's default checkpoint names,
# e.g. step=50.ckpt, or a Hydra multirun folder such as 0_model/codec=stft) cannot be typed bare:
# Hydra's grammar reads the second '=' as a syntax error.
PATH_KEYS = ("ckpt", "input", "output", "init_from", "ckpt_path", "enhanced", "reference", "noisy", "conditions",
             "data.root", "data.noisy_dir", "data.clean_dir", "prior.dir", "noise.dir", "model.codec.weights",
             "dac_weights", "runs")


class UsageError(ValueError):
    """A command cannot run as configured; the message names the setting and the fix."""


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("usedddp_demo_root"):
        OmegaConf.register_new_resolver("usedddp_demo_root", lambda: str(DEMO_ROOT))
    if not OmegaConf.has_resolver("usedddp_on_cpu"):
        # ${usedddp_on_cpu:${trainer.accelerator}}: a default that holds where it was measured (a CPU) only.
        OmegaConf.register_new_resolver("usedddp_on_cpu", lambda accelerator="cpu": str(accelerator) == "cpu")


register_resolvers()


def quote_path_overrides(argv: list[str], keys: tuple[str, ...] = PATH_KEYS) -> list[str]:
    """Command-line overrides with the value of each path key quoted when it holds '=' (and is
    not quoted already), so that `ckpt=run/stage3/checkpoints/step=50.ckpt` means that file."""
    pattern = re.compile(r"^(\+{0,2}(?:%s))=(.*=.*)$" % "|".join(re.escape(k) for k in keys), re.S)
    quoted = []
    for arg in argv:
        match = pattern.match(arg)
        if match and not match.group(2)[:1] in ("'", '"'):
            value = match.group(2).replace("\\", "\\\\").replace("'", "\\'")
            arg = f"{match.group(1)}='{value}'"
        quoted.append(arg)
    return quoted


def prepare_argv() -> None:
    """Apply quote_path_overrides to this process's command line (before Hydra parses it)."""
    sys.argv[1:] = quote_path_overrides(sys.argv[1:])
