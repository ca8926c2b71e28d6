"""The commands' shape: packaged configs, checkpoint names the CLI takes back, step budgets, a GPU
trainer on a CPU machine, the import graph, and a non-editable install running every command."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from test_train import TINY, _env, _tail, args, fake_vctk, load_ckpt, read_summary, train  # noqa: F401
from usedddp.assets import DEMO_ROOT
from usedddp.config import CONFIG_DIR, UsageError, quote_path_overrides

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "usedddp"
TIMEOUT_S = 600


def _compose(*overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def _run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


# -- 1. configs are package data -----------------------------------------------------------------


def test_configs_live_inside_the_package():
    assert CONFIG_DIR == SRC / "configs" and (CONFIG_DIR / "train.yaml").is_file()
    # The repository's top-level configs/ is the same folder, not a copy that could drift.
    assert (ROOT / "configs").resolve() == CONFIG_DIR.resolve()


# -- 2. step budgets -----------------------------------------------------------------------------


def test_typed_trainer_max_steps_wins_over_the_experiments_stage_budgets():
    from usedddp.train import stage_budget

    default = _compose()  # experiment=demo: 100/50/50
    assert [stage_budget(default, s) for s in (1, 2, 3)] == [100, 50, 50]
    typed = _compose("trainer.max_steps=1")
    assert [stage_budget(typed, s) for s in (1, 2, 3)] == [1, 1, 1]
    vctk = _compose("experiment=vctk_unsup", "data.root=/data/VCTK-DEMAND", "trainer=default", "trainer.max_steps=3")
    assert [stage_budget(vctk, s) for s in (1, 2, 3)] == [3, 3, 3]
    one = _compose("stage_max_steps={3:7}")  # merged into the experiment's budgets
    assert [stage_budget(one, s) for s in (1, 2, 3)] == [100, 50, 7]
    with pytest.raises(UsageError, match=r"training stage 1 has no step budget.*trainer.max_steps=N"):
        stage_budget(_compose("stage_max_steps=null"), 1)


# -- 3. a GPU trainer on a machine without one ---------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: trainer=gpu is valid here")
def test_gpu_trainer_without_a_gpu_names_the_cpu_override(tmp_path):
    result = _run([sys.executable, "-m", "usedddp.train", f"hydra.run.dir={tmp_path / 'run'}", "experiment=vctk_unsup",
                   f"data.root={tmp_path}"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2, _tail(result.stdout)
    assert "error: trainer.accelerator=gpu" in result.stdout and "add trainer=default" in result.stdout, _tail(result.stdout)
    assert "Traceback" not in result.stdout and "MisconfigurationException" not in result.stdout, _tail(result.stdout)
    assert not (tmp_path / "run" / "summary.json").exists()


# -- 4. every checkpoint a run writes goes back into the CLI ----------------------------------------


def test_paths_with_equals_signs_are_quoted_for_hydra():
    assert quote_path_overrides(["ckpt=runs/0_codec=stft/step=50.ckpt", "noise=true", "output=out",
                                 "ckpt='already=quoted'", "trainer.max_steps=3"]) == [
        "ckpt='runs/0_codec=stft/step=50.ckpt'", "noise=true", "output=out", "ckpt='already=quoted'", "trainer.max_steps=3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The tiny model, two steps of stage 1, with a numbered checkpoint every step and a
    validation (so best.ckpt too)."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    train(run_dir, args("stages=[1]", "stage_max_steps={1:2}", "callbacks.last.every_n_train_steps=1",
                        "trainer.val_check_interval=2", "logger=csv"))
    return run_dir


def test_checkpoint_names_need_no_quoting(trained):
    names = sorted(p.name for p in (trained / "stage1" / "checkpoints").glob("*.ckpt"))
    assert names == ["best.ckpt", "last.ckpt", "step_000002.ckpt"], names
    assert all("=" not in name for name in names)
    # Each carries the config that rebuilds its model, as plain containers.
    state = load_ckpt(trained / "stage1" / "checkpoints" / "step_000002.ckpt")
    assert state["usedddp"]["stage"] == 1 and state["usedddp"]["config"]["model"]["branch"]["dim"] == 32


def _enhance(tmp: Path, ckpt: str, out: str) -> subprocess.CompletedProcess:
    clip = sorted((DEMO_ROOT / "noisy_testset").glob("*.flac"))[0]
    return _run([sys.executable, "-m", "usedddp.enhance", f"hydra.run.dir={tmp / 'hydra'}", f"ckpt={ckpt}",
                 f"input={clip}", f"output={out}"], cwd=tmp, timeout=120)


def test_enhance_takes_every_checkpoint_the_run_wrote(tmp_path, trained):
    for ckpt in sorted((trained / "stage1" / "checkpoints").glob("*.ckpt")) + [trained]:
        result = _enhance(tmp_path, str(ckpt), str(tmp_path / ckpt.stem))
        assert result.returncode == 0, f"ckpt={ckpt}\n{_tail(result.stdout)}"
        assert len(list((tmp_path / ckpt.stem).glob("*.flac"))) == 1


def test_sampler_options_are_refused_for_a_use_ddp_run(tmp_path, trained):
    clip = sorted((DEMO_ROOT / "noisy_testset").glob("*.flac"))[0]
    result = _run([sys.executable, "-m", "usedddp.enhance", f"hydra.run.dir={tmp_path / 'hydra'}", f"ckpt={trained}",
                   f"input={clip}", f"output={tmp_path / 'out'}", "method.sampler=fast"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "USE-DDP run" in result.stdout, _tail(result.stdout)
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_alone_elsewhere_enhances_even_with_equals_in_its_path(tmp_path, trained):
    # Copied out of its run (no .hydra beside it) into a folder named like a multirun job, under
    # an older Lightning-style name: the stored config rebuilds the model, the CLI quotes the path.
    lone = tmp_path / "0_codec=stft" / "step=2.ckpt"
    lone.parent.mkdir()
    shutil.copyfile(trained / "stage1" / "checkpoints" / "last.ckpt", lone)
    result = _enhance(tmp_path, str(lone), str(tmp_path / "out"))
    assert result.returncode == 0, _tail(result.stdout)
    assert "enhanced 1 of 1 files (0 failed)" in result.stdout


# -- 5. the import graph ----------------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names; relative imports resolved against usedddp)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1]) if path.is_relative_to(SRC) else ""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def _importers(files, forbidden: str) -> list[str]:
    return [str(f.relative_to(ROOT)) for f in files
            if any(name == forbidden or name.startswith(forbidden + ".") for name in _imports(f))]


def test_import_graph():
    assert _importers([SRC / "enhance.py", SRC / "evaluate.py", SRC / "inference.py", SRC / "audit.py",
                       *(ROOT / "scripts").glob("*.py"), *(SRC / "metrics").glob("*.py")], "usedddp.train") == []
    assert _importers((SRC / "losses").glob("*.py"), "usedddp.models") == []
    assert _importers([SRC / "models/components/branch.py", SRC / "models/components/quantizer.py",
                       SRC / "models/components/stft_codec.py", SRC / "models/generator.py"],
                      "usedddp.models.components.dac_codec") == []
    # The reporting module stays torch-free (the ablation notebook and tables need no model stack).
    assert _importers([SRC / "reporting.py"], "torch") == []


def test_benchmarks_time_the_modules_own_step():
    # The step's parts (loss terms, clipping) are called by the module only, never re-assembled.
    for script in (ROOT / "scripts").glob("benchmark_*.py"):
        text = script.read_text()
        for name in ("generator_terms", "discriminator_terms", "clip_grad", "manual_backward"):
            assert name not in text, f"{script.name} rebuilds the training step ({name})"


# -- 6. stale text --------------------------------------------------------------------------------


def test_comments_cite_papers_not_seed_files():
    # The seed files are notes outside the repository; a citation names authors and title.
    stale = [f"{p.relative_to(ROOT)}:{i}" for p in [*SRC.rglob("*.py"), *CONFIG_DIR.rglob("*.yaml"), ROOT / "README.md"]
             for i, line in enumerate(p.read_text().splitlines(), 1) if "seed 00" in line]
    assert stale == []


def test_every_declared_dependency_is_used():
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(";")[0].split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip().lower() for d in declared}
    # Distribution name -> the import name(s) that use it; ones imported under their own name are found as is.
    imported_as = {"descript-audio-codec": "dac", "hydra-core": "hydra", "rotary-embedding-torch": "rotary_embedding_torch",
                   "silero-vad": "silero_vad", "speechmos": "speechmos", "pesq": "pesq", "pystoi": "pystoi",
                   "ema-pytorch": "ema_pytorch", "praat-parselmouth": "parselmouth"}
    used = set()
    for path in [*SRC.rglob("*.py"), *(ROOT / "scripts").glob("*.py")]:
        used |= {name.split(".")[0] for name in _imports(path)}
        text = path.read_text()
        used |= {name for name in imported_as.values() if f'"{name}"' in text}  # located by find_spec, not imported
    unused = sorted(n for n in names if imported_as.get(n, n.replace("-", "_")) not in used)
    assert unused == [], f"declared in pyproject.toml but imported nowhere: {unused}"


# -- 7. a non-editable install runs every command ----------------------------------------------------


@pytest.mark.slow
def test_wheel_install_runs_train_enhance_and_evaluate(tmp_path):
    """The package as a wheel, installed alone into a fresh virtual environment (its
    dependencies seen through a .pth line to this environment's site-packages, whose editable
    hook is not run from there): configs, assets and every command come from the wheel."""
    # Built from a copy: setuptools writes build/ and *.egg-info/ beside the sources it builds.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", source / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)], cwd=tmp_path)
    assert build.returncode == 0, _tail(build.stdout)
    wheel = next(wheels.glob("usedddp-*.whl"))
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path).returncode == 0
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp_path).stdout.strip())
    install = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(site), str(wheel)],
                   cwd=tmp_path)
    assert install.returncode == 0, _tail(install.stdout)
    (site / "_usedddp_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = {k: v for k, v in _env().items() if k != "PYTHONPATH"}
    work = tmp_path / "work"
    work.mkdir()

    where = _run([str(python), "-c", "import usedddp.config as c; print(c.__file__); print(c.CONFIG_DIR.is_dir())"], cwd=work, env=env)
    assert where.stdout.split() == [str(site / "usedddp" / "config.py"), "True"], where.stdout

    run_dir = work / "run"
    shrink = [f"{k}={v}" for k, v in TINY.items() if k.startswith(("data.", "n_examples"))]
    trained = _run([str(python), "-m", "usedddp.train", f"hydra.run.dir={run_dir}", "trainer.max_steps=1", "logger=csv",
                    "model.val_dnsmos=false", *shrink], cwd=work, env=env)
    assert trained.returncode == 0, _tail(trained.stdout)
    assert {k: v["steps"] for k, v in read_summary(run_dir)["stages"].items()} == {"1": 1, "2": 1, "3": 1}

    enhanced = _run([str(python), "-m", "usedddp.enhance", f"hydra.run.dir={work / 'h1'}", f"ckpt={run_dir}",
                     f"input={DEMO_ROOT / 'noisy_testset'}", f"output={work / 'enhanced'}"], cwd=work, env=env)
    assert enhanced.returncode == 0 and "enhanced 16 of 16 files (0 failed)" in enhanced.stdout, _tail(enhanced.stdout)

    scored = _run([str(python), "-m", "usedddp.evaluate", f"hydra.run.dir={work / 'h2'}",
                   f"ckpt={run_dir / 'stage3' / 'checkpoints' / 'last.ckpt'}", f"output={work / 'eval'}", "dnsmos=false",
                   "jobs=2"], cwd=work, env=env)
    assert scored.returncode == 0, _tail(scored.stdout)
    assert (work / "eval" / "summary.json").is_file() and "| noisy | 16 |" in scored.stdout, _tail(scored.stdout)
