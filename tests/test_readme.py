"""The README's two commands are the user interface: CI must run the test one verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [line.strip() for block in blocks[:2] for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_has_the_two_setup_commands():
    main, tests = readme_commands()
    assert main.startswith("python3 -m venv .venv") and main.endswith("python -m usedddp.train")
    assert tests.startswith("python3 -m venv .venv") and "pytest" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    _, tests = readme_commands()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines


def test_default_experiment_config_is_what_the_readme_promises():
    # "python -m usedddp.train" with no overrides: demo data and priors, the tiny model with the
    # fixed STFT codec (model=tiny_stft), all three stages.
    from hydra import compose, initialize_config_dir

    import usedddp.config

    with initialize_config_dir(str(usedddp.config.CONFIG_DIR), version_base="1.3"):
        cfg = compose("train")
    assert list(cfg.stages) == [1, 2, 3]
    assert cfg.data.domain == "demo" and cfg.prior.name == "demo" and cfg.noise.name == "demo"
    assert cfg.model.codec._target_.endswith("STFTCodec") and cfg.model.branch.dim == 64  # model=tiny_stft
    assert cfg.model.codec.weights is None
    # The DAC-shaped tiny model is one override away.
    with initialize_config_dir(str(usedddp.config.CONFIG_DIR), version_base="1.3"):
        dac = compose("train", overrides=["model/codec=dac_tiny"])
    assert dac.model.codec._target_.endswith("DACCodec") and dac.model.codec.encoder_dim == 8
