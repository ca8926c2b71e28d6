"""What a run logs, and where: the wandb mode decision, the logged statistics (codebook usage and
perplexity, alpha/beta, gradient norms, learning rates), the validation media callback, and one
end-to-end run with the default logger read back from wandb's offline files (no mocks)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from torch.utils.data import DataLoader

from test_train import TIMEOUT_S, args
from usedddp.callbacks import ValidationMedia
from usedddp.data.batches import SimulatedBatch, ValidationBatch, collate_simulated, collate_validation
from usedddp.loggers import wandb_group, wandb_mode
from usedddp.models.module import codebook_stats

SR = 16000


# -- offline unless asked ----------------------------------------------------------------------


@pytest.mark.parametrize("configured, environ, expected", [
    (None, {}, "offline"),  # no account, no network
    (None, {"WANDB_API_KEY": "x" * 40}, "online"),
    (None, {"WANDB_MODE": "disabled", "WANDB_API_KEY": "x" * 40}, "disabled"),  # WANDB_MODE wins
    (None, {"WANDB_MODE": "offline", "WANDB_API_KEY": "x" * 40}, "offline"),
    (None, {"WANDB_MODE": "online"}, "online"),
    (None, {"WANDB_MODE": ""}, "offline"),  # empty counts as unset
    ("offline", {"WANDB_MODE": "online", "WANDB_API_KEY": "x" * 40}, "offline"),  # logger.wandb.mode wins
])
def test_wandb_mode(configured, environ, expected):
    assert wandb_mode(configured, environ) == expected


@pytest.mark.parametrize("mode, expected", [("RUN", "demo/2026-01-01_00-00-00"), ("MULTIRUN", "demo/2026-01-01_00-00-00/0_prior=demo")])
def test_wandb_group_keeps_the_stages_of_one_run_together(mode, expected):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    import usedddp.config

    run_dir = Path("outputs/demo/2026-01-01_00-00-00") if mode == "RUN" else Path("multirun/demo/2026-01-01_00-00-00/0_prior=demo")
    with initialize_config_dir(str(usedddp.config.CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True, overrides=[f"hydra.mode={mode}"])
    HydraConfig.instance().set_config(cfg)
    try:
        assert wandb_group("demo", run_dir) == expected
    finally:
        HydraConfig.instance().cfg = None
    assert wandb_group("demo", run_dir).startswith("demo/")  # outside Hydra: <run_name>/<run dir name>
    assert len(wandb_group("x", Path("a" * 300))) == 128


# -- codebook statistics -----------------------------------------------------------------------


def test_codebook_stats_known_answers():
    k = 8
    one_code = torch.zeros(2, 3, 5, dtype=torch.long)  # every frame of every codebook: code 0
    stats = codebook_stats(one_code, k, "x")
    assert stats["x/perplexity"] == pytest.approx(1.0) and stats["x/usage"] == pytest.approx(1 / k)
    uniform = torch.arange(k).repeat(3).reshape(1, 1, -1).expand(2, 2, -1)  # every code equally often
    stats = codebook_stats(uniform, k, "x")
    assert stats["x/perplexity"] == pytest.approx(k) and stats["x/usage"] == pytest.approx(1.0)
    # two codes, 3:1 -> exp(H) with H = -(3/4 ln 3/4 + 1/4 ln 1/4); per codebook for the first ones
    mixed = torch.tensor([[[0, 0, 0, 1], [2, 2, 2, 2]]])
    stats = codebook_stats(mixed, k, "x", per_codebook=4)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert stats["x/perplexity/q0"] == pytest.approx(math.exp(h)) and stats["x/perplexity/q1"] == pytest.approx(1.0)
    assert stats["x/perplexity"] == pytest.approx((math.exp(h) + 1) / 2) and stats["x/usage"] == pytest.approx(1.5 / k)
    assert set(stats) == {"x/usage", "x/perplexity", "x/perplexity/q0", "x/perplexity/q1"}
    assert codebook_stats(torch.zeros(2, 0, 5, dtype=torch.long), k, "x") == {}  # n_codebooks = 0


# -- what training_step logs ---------------------------------------------------------------------


class Capture(Logger):
    """Keeps what Lightning hands to a logger."""

    def __init__(self):
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    @property
    def name(self):
        return "capture"

    @property
    def version(self):
        return "0"

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def _simulated_loader(n=4, length=4000):
    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(n):
        t = torch.arange(length) / SR
        clean = 0.3 * torch.sin(2 * torch.pi * (150 + 100 * torch.rand(1, generator=g)) * t)[None]
        noise = 0.1 * torch.randn(1, length, generator=g)
        items.append(SimulatedBatch(clean + noise, clean, noise))
    return DataLoader(items, batch_size=2, collate_fn=collate_simulated)


def _fit(module, root, *, logger, callbacks=(), val_loader=None, max_steps=2):
    trainer = L.Trainer(
        accelerator="cpu", max_steps=max_steps, max_epochs=3, logger=logger, callbacks=list(callbacks),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        log_every_n_steps=1, default_root_dir=str(root),
        **({"val_check_interval": 1, "check_val_every_n_epoch": None} if val_loader is not None else {"limit_val_batches": 0}),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, _simulated_loader(), val_loader)
    return trainer


@pytest.mark.parametrize("stage", [1, 2])
def test_training_step_logs_statistics(make_module, tmp_path, stage):
    module = make_module(grad_clip_val=1e-6)  # every step clips: the logged norms are the pre-clip ones
    module.training_stage = stage
    capture = Capture()
    _fit(module, tmp_path, logger=capture)
    train_rows = [m for _, m in capture.rows if "train/g/total" in m]
    assert len(train_rows) == 2, capture.rows
    row = train_rows[-1]
    streams = ("clean",) if stage == 1 else ("clean", "noise")
    ensembles = ("clean",) if stage == 1 else ("clean", "noise", "noisy")
    expected = {"train/lr/g", "train/lr/d", "train/grad_norm/g", "train/grad_norm/d", "train/d/total", "train/stage"}
    expected |= {f"train/grad_norm/g/{part}" for part in ("encoder", "decoder", *streams)}
    expected |= {f"train/grad_norm/d/{name}" for name in ensembles}
    expected |= {f"train/d/{name}" for name in ensembles} | {f"train/adv/{name}/{t}" for name in ensembles for t in ("gen", "feat")}
    for s in streams:
        expected |= {f"train/vq/{s}/commitment", f"train/vq/{s}/codebook", f"train/g/{s}/mel"}
        expected |= {f"train/codebook/{s}/usage", f"train/codebook/{s}/perplexity", f"train/codebook/{s}/perplexity/q0"}
    if stage == 2:
        expected |= {f"train/{x}/{s}" for x in ("alpha", "beta") for s in ("mean", "std", "min", "max")} | {"train/g/mix/mel"}
    assert expected <= set(row), sorted(expected - set(row))
    if stage == 1:  # the noise branch and its ensembles sit out: no statistics for them
        assert not any(k.startswith(("train/alpha", "train/codebook/noise", "train/grad_norm/d/noisy", "train/grad_norm/g/noise")) for k in row)
    for player in ("g", "d"):
        parts = [v for k, v in row.items() if k.startswith(f"train/grad_norm/{player}/")]
        assert row[f"train/grad_norm/{player}"] == pytest.approx(math.sqrt(sum(v * v for v in parts)), rel=1e-4)
        assert row[f"train/grad_norm/{player}"] > 1e-3  # pre-clip (clipped to 1e-6)
    n_codebooks, codebook_size = 4, 256  # model=tiny
    for s in streams:
        assert 1.0 <= row[f"train/codebook/{s}/perplexity"] <= codebook_size
        assert 1 / codebook_size <= row[f"train/codebook/{s}/usage"] <= 1.0
        assert f"train/codebook/{s}/perplexity/q{n_codebooks - 1}" in row
    assert row["train/lr/g"] == pytest.approx(1e-3) and row["train/lr/d"] == pytest.approx(1e-3)
    if stage == 2:
        assert row["train/alpha/min"] <= row["train/alpha/mean"] <= row["train/alpha/max"] and row["train/alpha/std"] >= 0


# -- validation media (TensorBoard, in-process) --------------------------------------------------


def _validation_loader(n=3, length=8000):
    g = torch.Generator().manual_seed(1)
    items = []
    for i in range(n):
        clean = 0.2 * torch.sin(2 * torch.pi * 200 * torch.arange(length) / SR)[None]
        items.append(ValidationBatch(noisy=clean + 0.05 * torch.randn(1, length, generator=g), clean=clean, name=[f"dir/clip{i}.wav"]))
    return DataLoader(items, batch_size=1, collate_fn=collate_validation)


def test_validation_media_to_tensorboard(make_module, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module = make_module(full_metrics_every_n_val=0)
    module.training_stage = 2
    logger = TensorBoardLogger(str(tmp_path), name="tb", version="stage2")
    _fit(module, tmp_path, logger=logger, callbacks=[ValidationMedia(n_clips=2)], val_loader=_validation_loader())
    events = EventAccumulator(logger.log_dir, size_guidance={"audio": 0, "images": 0}).Reload()
    tags = events.Tags()
    clips = ("dir__clip0.wav", "dir__clip1.wav")  # the first two of three clips, in order
    for clip in clips:
        for stream in ("clean", "noise", "reconstruction"):  # every validation: steps 1 and 2
            assert [e.step for e in events.Audio(f"media/audio/{stream}/{clip}")] == [1, 2], (stream, clip)
        for ref in ("noisy", "reference"):  # once
            assert [e.step for e in events.Audio(f"media/audio/{ref}/{clip}")] == [1], (ref, clip)
        images = events.Images(f"media/spectrogram/{clip}")
        assert [e.step for e in images] == [1, 2] and images[0].width > 100 and images[0].height > 100
    assert not any("clip2" in tag for tag in tags["audio"] + tags["images"]), tags
    assert "val/si_sdr" in tags["scalars"] and "train/grad_norm/g" in tags["scalars"]


def test_validation_media_spectrogram_image():
    media = ValidationMedia()
    t = np.arange(SR) / SR
    clip = {"name": "a/b.wav", "noisy": np.sin(2 * np.pi * 440 * t).astype(np.float32)}
    clip.update(clean=clip["noisy"] * 0.5, noise=np.zeros(SR, np.float32), reconstruction=clip["noisy"])
    image = media.spectrogram(clip, SR)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.shape[0] > image.shape[1] / 2
    assert image.std() > 10  # not blank


# -- end to end: the default logger, offline, read back from wandb's own files -------------------

NETWORK_GUARD = '''
import os, socket
_LOG = os.environ["USEDDDP_NETWORK_LOG"]
_LOCAL = ("127.", "::1", "localhost", "0.0.0.0", "::ffff:127.")
def _record(line):
    with open(_LOG, "a") as f:
        f.write(f"{os.getpid()} {line}\\n")
_record("guard loaded")
_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo
def _remote(sock, address):
    return sock.family in (socket.AF_INET, socket.AF_INET6) and not str(address[0]).startswith(_LOCAL)
def connect(self, address):
    if _remote(self, address):
        _record(f"connect {address!r}")
        raise OSError("network blocked by the test")
    return _connect(self, address)
def connect_ex(self, address):
    if _remote(self, address):
        _record(f"connect_ex {address!r}")
        return 111
    return _connect_ex(self, address)
def getaddrinfo(host, *args, **kwargs):
    if host is not None and not str(host).startswith(_LOCAL) and host != socket.gethostname():
        _record(f"getaddrinfo {host!r}")
        raise socket.gaierror("network blocked by the test")
    return _getaddrinfo(host, *args, **kwargs)
socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
'''


class ConnectionRecorder:
    """A local TCP listener standing in for every HTTP(S) proxy: a process that honours the proxy
    variables (wandb's Go core does) and tries to reach anything is recorded here."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.connections: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    self.connections.append(conn.recv(200))
                except OSError:
                    self.connections.append(b"")

    def close(self):
        self._stop.set()
        self._thread.join()
        self.server.close()


def read_wandb_run(path: Path) -> dict:
    """The records of one offline run (its run-<id>.wandb transaction log), through wandb's own
    reader: the run record, the config, the history rows ({key: value}, media as dicts) and the
    files registered for upload."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    store = datastore.DataStore()
    store.open_for_scan(str(path))
    out = {"run": None, "config": {}, "history": [], "files": [], "kinds": set()}
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        out["kinds"].add(kind)
        if kind == "run":
            out["run"] = record.run
        elif kind == "config":
            for item in record.config.update:
                out["config"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "history":
            row = {}
            for item in record.history.item:
                keys = list(item.nested_key) or [item.key]
                value = json.loads(item.value_json)
                if len(keys) == 1:
                    row[keys[0]] = value
                else:
                    row.setdefault(keys[0], {})["/".join(keys[1:])] = value
            out["history"].append(row)
        elif kind == "files":
            out["files"] += [f.path for f in record.files.files]
    return out


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    """A default-logger run (stage 1 for 1 step, stage 2 for 2, validation after every step)
    with no WANDB_* variables, a Python-level network guard and every proxy pointing at a recorder."""
    root = tmp_path_factory.mktemp("wandb_default")
    guard_dir = root / "guard"
    guard_dir.mkdir()
    (guard_dir / "sitecustomize.py").write_text(NETWORK_GUARD)
    network_log = root / "network.log"
    recorder = ConnectionRecorder()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k.lower() not in ("no_proxy", "http_proxy", "https_proxy", "all_proxy")}
    proxy = f"http://127.0.0.1:{recorder.port}"
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([str(guard_dir), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               USEDDDP_NETWORK_LOG=str(network_log), HTTP_PROXY=proxy, HTTPS_PROXY=proxy, ALL_PROXY=proxy,
               http_proxy=proxy, https_proxy=proxy, all_proxy=proxy)
    env.pop("HYDRA_FULL_ERROR", None)
    run_dir = root / "run"
    overrides = args("stages=[1,2]", "stage_max_steps={1:1,2:2}", "trainer.val_check_interval=1", "trainer.log_every_n_steps=1",
                     "data.val_max_seconds=0.5")
    assert not any(o.startswith("logger") for o in overrides), overrides  # the default logger
    cmd = [sys.executable, "-m", "usedddp.train", f"hydra.run.dir={run_dir}", *overrides]
    try:
        result = subprocess.run(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=3 * TIMEOUT_S, stdin=subprocess.DEVNULL)
    finally:
        recorder.close()
    assert result.returncode == 0, result.stdout[-6000:]
    return run_dir, result, network_log.read_text().splitlines(), recorder.connections


def _offline_runs(run_dir: Path) -> dict[int, tuple[Path, dict]]:
    runs = {}
    for path in sorted((run_dir / "wandb").glob("offline-run-*")):
        record = read_wandb_run(next(path.glob("run-*.wandb")))
        runs[int(record["config"]["stage"])] = (path, record)
    return runs


def test_default_run_is_offline_with_no_network(wandb_run):
    run_dir, result, network_log, connections = wandb_run
    assert any("guard loaded" in line for line in network_log), "the network guard did not load"
    assert [line for line in network_log if "guard loaded" not in line] == [], network_log
    assert connections == [], connections
    dirs = sorted(p.name for p in (run_dir / "wandb").iterdir() if p.is_dir() and not p.is_symlink())
    assert len(dirs) == 2 and all(d.startswith("offline-run-") for d in dirs), dirs  # one per stage, none online
    assert "wandb sync" in result.stdout and "offline mode" in (run_dir / "train.log").read_text()
    assert (run_dir / "logs" / "stage1" / "metrics.csv").is_file()  # CSV next to wandb


def test_wandb_config_names_the_priors_and_groups_the_stages(wandb_run):
    run_dir, *_ = wandb_run
    runs = _offline_runs(run_dir)
    assert set(runs) == {1, 2}
    summary = json.loads((run_dir / "summary.json").read_text())
    for stage, (_, record) in runs.items():
        config, run = record["config"], record["run"]
        # the corpora and the in-domain flag, as the run's summary records them
        assert config["prior"] == summary["prior"] and config["noise"] == summary["noise"], (config["prior"], summary["prior"])
        assert config["prior"]["name"] == "demo" and isinstance(config["prior"]["in_domain"], bool)
        assert config["data"]["domain"] == summary["data"]["domain"] and config["stage"] == stage
        assert config["run_name"] == "demo" and config["model"]["loss_weights"]["g/mix/mel"] > 0
        assert run.display_name == f"demo/stage{stage}" and run.job_type == f"stage{stage}"
        assert run.run_group == "demo/run" and run.project == "usedddp"  # <run_name>/<run dir name>
        domain_tag = "in-domain" if config["prior"]["in_domain"] else "out-of-domain"
        assert set(run.tags) == {f"stage{stage}", "prior:demo", "noise:demo", domain_tag}, list(run.tags)


def test_wandb_history_has_every_key_group(wandb_run):
    run_dir, *_ = wandb_run
    runs = _offline_runs(run_dir)
    for stage, (_, record) in runs.items():
        keys = {k for row in record["history"] for k in row}
        streams = ("clean",) if stage == 1 else ("clean", "noise")
        ensembles = ("clean",) if stage == 1 else ("clean", "noise", "noisy")
        expected = {"trainer/global_step", "train/g/total", "train/d/total", "train/lr/g", "train/lr/d",
                    "train/grad_norm/g", "train/grad_norm/d", "val/si_sdr", "val/input/si_sdr", "val/mix/si_sdr",
                    "val/alpha", "val/beta", "val/pesq_wb", "val/estoi"}
        expected |= {f"train/g/{s}/{t}" for s in streams for t in ("mel", "stft", "sisdr")}
        expected |= {f"train/vq/{s}/{t}" for s in streams for t in ("commitment", "codebook")}
        expected |= {f"train/codebook/{s}/{t}" for s in streams for t in ("usage", "perplexity")}
        expected |= {f"train/d/{e}" for e in ensembles} | {f"train/adv/{e}/{t}" for e in ensembles for t in ("gen", "feat")}
        expected |= {f"train/grad_norm/d/{e}" for e in ensembles} | {f"train/grad_norm/g/{s}" for s in streams}
        if stage == 2:
            expected |= {f"train/g/mix/{t}" for t in ("mel", "stft", "sisdr")} | {"train/g/scale"}
            expected |= {f"train/{x}/{s}" for x in ("alpha", "beta") for s in ("mean", "std", "min", "max")}
        assert expected <= keys, (stage, sorted(expected - keys))
        steps = sorted(row["trainer/global_step"] for row in record["history"] if "train/g/total" in row)
        assert steps == list(range(stage)), steps  # stage k ran k steps


def test_wandb_media_every_validation_references_once(wandb_run):
    run_dir, *_ = wandb_run
    for stage, (path, record) in _offline_runs(run_dir).items():
        media_rows = [row for row in record["history"] if "media/spectrogram" in row]
        # a validation after every step; the end-of-stage validation (at the last step) is not logged again
        assert [row["trainer/global_step"] for row in media_rows] == list(range(1, stage + 1)), stage
        for i, row in enumerate(media_rows):
            refs = ("noisy", "reference") if i == 0 else ()
            for stream in ("clean", "noise", "reconstruction", *refs):
                audio = row[f"media/audio/{stream}"]
                assert audio["_type"] == "audio" and audio["count"] == 2 and audio["sampleRates"] == [SR, SR], (stage, stream)
                assert len(set(audio["captions"])) == 2, audio["captions"]
                for entry in audio["audio"]:
                    wav, rate = sf.read(str(path / "files" / entry["path"]))
                    assert rate == SR and len(wav) == SR // 2 and np.abs(wav).max() <= 1.0, entry
            if not refs:
                assert not any(k in row for k in ("media/audio/noisy", "media/audio/reference")), sorted(row)
            images = row["media/spectrogram"]
            assert images["count"] == 2 and images["format"] == "png" and images["captions"] == media_rows[0]["media/audio/clean"]["captions"]
            for name in images["filenames"]:
                assert (path / "files" / name).stat().st_size > 1000, name
        assert any(p.startswith("media/images/") for p in record["files"]) and any(p.startswith("media/audio/") for p in record["files"])
