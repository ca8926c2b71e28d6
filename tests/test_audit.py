"""Tests of the corpus audit, `python -m usedddp.audit` and its run at the start of training.

Synthetic corpora with known answers (bandwidth, floor, active level, SNR) written to tmp_path,
real demo clips for the VAD and WADA-SNR on speech, and the embedded demo priors for the failure
the audit exists for (prior=demo_bandlimited against data=demo).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hydra import compose, initialize_config_dir

import usedddp.train
from usedddp.assets import DEMO_ROOT
from usedddp.audio import CorpusError, load_audio
from usedddp.audit import (
    AuditSettings,
    median_f0_hz,
    active_level_db,
    audit_config,
    audit_corpora,
    audit_corpus,
    bandwidth_hz,
    compact,
    ltas_frames,
    run,
    wada_snr_db,
    wada_table,
    SileroVAD,
)

SR = 16000
KINDS = {"bandwidth", "noise_floor", "speech_in_noise_prior", "sample_rate", "too_short", "snr_range", "level", "no_speech",
         "voice_range", "noisy_reference"}
# The cleanest demo test reference (WADA-SNR 31 dB on its own), for known-SNR mixtures.
CLEAN_FILE = DEMO_ROOT / "clean_testset" / "el_Kiriaki_Serafeim__animals__mammals__bovines__sheep_lamb_desc_el.flac"
TIMEOUT_S = 300


def _white(seconds: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(round(seconds * SR))


def _lowpass(x: np.ndarray, hz: float) -> np.ndarray:
    spectrum = np.fft.rfft(x)
    spectrum[np.fft.rfftfreq(len(x), 1 / SR) > hz] = 0
    return np.fft.irfft(spectrum, len(x))


def _bursts(seed: int, floor_db: float | None, lowpass_hz: float | None = None, level_db: float = -20.0,
            seconds: float = 4.0) -> np.ndarray:
    """Noise bursts of 1 s every 2 s at `level_db` dBFS RMS; the gaps are digital silence
    (floor_db None) or noise `floor_db` below the bursts. The gate has 10 ms raised-cosine ramps,
    so its edges spread (low-passed) noise by a few tens of Hz."""
    t = np.arange(round(seconds * SR)) / SR
    ramp = 0.01
    gate = np.clip(np.minimum(t % 2, 1 - t % 2) / ramp, 0, 1) * (t % 2 < 1)
    x = _white(seconds, seed)
    if lowpass_hz:
        x = _lowpass(x, lowpass_hz)
    x *= 0.5 * (1 - np.cos(np.pi * gate))
    x *= 10 ** (level_db / 20) / np.sqrt(np.mean(x[t % 2 < 1] ** 2))
    floor = 0.0 if floor_db is None else 10 ** ((level_db + floor_db) / 20) * _white(seconds, seed + 1000)
    return x + floor


def _write(folder: Path, name: str, x: np.ndarray, sr: int = SR) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    sf.write(path, np.clip(x, -1, 1).astype(np.float32), sr, subtype="PCM_16")
    return path


def _corpus(folder: Path, n: int, **kwargs) -> Path:
    for i in range(n):
        _write(folder, f"f{i}.wav", _bursts(seed=i, **kwargs))
    return folder


NO_VAD = AuditSettings(vad=False)


# --------------------------------------------------------------------------------------------
# Measurements with known answers


def test_bandwidth_of_lowpassed_and_wideband_noise():
    narrow = ltas_frames(_lowpass(_white(2, 0), 4000), SR).mean(axis=0)
    wide = ltas_frames(_white(2, 0), SR).mean(axis=0)
    assert abs(bandwidth_hz(narrow, SR) - 4000) <= 150  # one 31 Hz bin of leakage at most, a few
    assert bandwidth_hz(wide, SR) >= 7800


def test_corpus_bandwidth_floor_and_level(tmp_path):
    gated, _ = audit_corpus(_corpus(tmp_path / "gated", 3, floor_db=None, lowpass_hz=4000), SR, NO_VAD)
    natural, _ = audit_corpus(_corpus(tmp_path / "natural", 3, floor_db=-30.0), SR, NO_VAD)
    # Bandwidth: every low-passed file is band-limited (< 6 kHz), no wideband one.
    assert gated["band_limited_files"] == 3 and natural["band_limited_files"] == 0
    assert abs(gated["file_bandwidth_hz"]["median"] - 4000) <= 150
    # Floor: digital silence in the gaps (half of the frames) against a floor 30 dB down. The
    # active level ignores the gaps but counts the 0.2 s hangover: 10 log10(1.2 / 1) = 0.8 dB
    # under the burst level, so the floor reads -29.2 dB; 16 ms frames of noise spread by 1 dB.
    assert gated["gated_files"] == 3 and natural["gated_files"] == 0
    assert abs(gated["silent_frames"] - 0.5) <= 0.02
    assert natural["silent_frames"] == 0
    assert abs(natural["floor_db"]["median"] - (-29.2)) <= 2.0
    # Active level: the bursts' -20 dBFS within 1.5 dB (their RMS over the file is -23 dBFS).
    assert abs(natural["active_level_dbfs"]["median"] - (-20.0)) <= 1.5


def test_active_level_ignores_pauses():
    """1 s bursts at -20 dBFS every 2 s: P.56 counts each burst and its 0.2 s hangover as
    active, -20 - 10 log10(1.2) = -20.8 dBFS (the RMS over the file is -23 dBFS)."""
    x = _bursts(0, floor_db=None)
    assert abs(active_level_db(x, SR) - (-20.8)) <= 0.5
    assert abs(active_level_db(0.1 * x, SR) - (-40.8)) <= 0.5  # scales with the signal
    assert np.isnan(active_level_db(np.zeros(SR), SR))


def test_wada_table_matches_kim_stern():
    snr, g = wada_table()
    assert snr[0] == -20 and snr[-1] == 100 and np.all(np.diff(g) > 0)
    # Values of the table distributed with Kim & Stern's implementation (a Monte-Carlo estimate).
    published = {-20: 0.40974774, 0: 0.46221153, 10: 0.66750818, 20: 0.95655449, 40: 1.36057270, 100: 1.63204102}
    for db, value in published.items():
        assert abs(g[snr == db][0] - value) <= 0.006, db


def test_wada_snr_on_its_model_signal():
    """Gamma(0.4) 'speech' plus white noise: the estimator's own model, to within 0.5 dB."""
    rng = np.random.default_rng(1)
    s = rng.gamma(0.4, 1.0, 160000) * rng.choice([-1.0, 1.0], 160000)
    n = rng.standard_normal(len(s))
    for snr in (0.0, 5.0, 10.0, 20.0):
        x = s + n * np.sqrt(np.mean(s**2) / np.mean(n**2) / 10 ** (snr / 10))
        assert abs(wada_snr_db(x) - snr) <= 0.5, snr


def test_wada_snr_on_real_speech():
    """A real clean clip plus white noise at 5 and 20 dB. WADA-SNR reads real speech about 3 dB
    low (measured on the 16 demo test references: 1-5 dB at 5 dB, 10-18 dB at 20 dB), so the
    tolerance is 4 dB; the 15 dB step between the two must show."""
    x = load_audio(CLEAN_FILE, SR)[0].numpy().astype(np.float64)
    n = np.random.default_rng(0).standard_normal(len(x))
    estimates = {}
    for snr in (5.0, 20.0):
        estimates[snr] = wada_snr_db(x + n * np.sqrt(np.mean(x**2) / np.mean(n**2) / 10 ** (snr / 10)))
        assert abs(estimates[snr] - snr) <= 4.0, (snr, estimates[snr])
    assert estimates[20.0] - estimates[5.0] >= 10.0
    assert wada_snr_db(x) > estimates[20.0]


def test_noisy_test_references_warn_and_name_the_files(tmp_path):
    """A test set whose 'clean' references carry noise (white noise at 0 dB in 2 of 4 copies of a
    clean clip): a `noisy_reference` warning naming those two; the clean copies draw none."""
    x = load_audio(CLEAN_FILE, SR)[0].numpy().astype(np.float64)
    rng = np.random.default_rng(0)
    for i, snr in enumerate((None, None, 0.0, 0.0)):
        n = rng.standard_normal(len(x))
        y = x if snr is None else x + n * np.sqrt(np.mean(x**2) / np.mean(n**2) / 10 ** (snr / 10))
        _write(tmp_path / "test", f"ref{i}.wav", 0.5 * y / np.abs(y).max())
    report = audit_corpora({"test": tmp_path / "test"}, SR, NO_VAD)
    [warning] = [w for w in report["warnings"] if w["kind"] == "noisy_reference"]
    assert warning["corpus"] == "test" and "ref2.wav" in warning["message"] and "ref3.wav" in warning["message"]
    assert [r["file"] for r in report["corpora"]["test"]["noisy_files"]] in (["ref2.wav", "ref3.wav"], ["ref3.wav", "ref2.wav"])
    (tmp_path / "test" / "ref2.wav").unlink(), (tmp_path / "test" / "ref3.wav").unlink()
    report = audit_corpora({"test": tmp_path / "test"}, SR, NO_VAD)
    assert not [w for w in report["warnings"] if w["kind"] == "noisy_reference"]
    assert report["corpora"]["test"]["noisy_files"] == []


# --------------------------------------------------------------------------------------------
# Voice activity


def test_vad_flags_speech_not_noise():
    vad = SileroVAD()
    speech = load_audio(CLEAN_FILE, SR)[0].numpy()
    steady = 0.05 * _white(3, 0).astype(np.float32)
    rain = load_audio(DEMO_ROOT / "noise_prior" / "megaglest-data" / "autumn__rain.flac", SR)[0].numpy()
    p_speech, p_steady, p_rain = vad([speech, steady, rain])
    assert len(p_speech) == len(speech) // 512
    assert (p_speech >= 0.5).mean() >= 0.6
    assert (p_steady >= 0.5).mean() <= 0.05
    assert (p_rain >= 0.5).mean() <= 0.05


def test_speech_in_noise_prior_warns_and_names_files(tmp_path):
    noise = tmp_path / "noise"
    _write(noise, "steady.wav", 0.05 * _white(3, 0))
    for p in sorted((DEMO_ROOT / "clean_testset").glob("*.flac"))[:2]:
        shutil.copy(p, noise / p.name)
    report = audit_corpora({"noise": noise}, SR)
    (warning,) = [w for w in report["warnings"] if w["kind"] == "speech_in_noise_prior"]
    assert warning["corpus"] == "noise" and warning["value"] > 0.1
    named = {r["file"] for r in report["corpora"]["noise"]["speech_files"]}
    assert "steady.wav" not in named and len(named) == 2 and all(name in warning["message"] for name in named)


# --------------------------------------------------------------------------------------------
# Comparisons and warnings


def test_band_limited_gated_prior_warns_and_matched_prior_does_not(tmp_path):
    data = _corpus(tmp_path / "data", 3, floor_db=-30.0)
    bad = _corpus(tmp_path / "bad", 3, floor_db=None, lowpass_hz=4000)
    good = _corpus(tmp_path / "good", 3, floor_db=-35.0)
    report = audit_corpora({"prior": bad, "data": data}, SR, NO_VAD)
    kinds = {(w["kind"], w["corpus"]) for w in report["warnings"]}
    assert {("bandwidth", "prior"), ("noise_floor", "prior")} <= kinds
    assert report["comparisons"]["prior_vs_data"]["band_limited_share_gap"] == 1.0
    report = audit_corpora({"prior": good, "data": data}, SR, NO_VAD)
    assert not [w for w in report["warnings"] if w["kind"] in ("bandwidth", "noise_floor")]


def test_sample_rate_and_too_short_warnings(tmp_path):
    _write(tmp_path / "prior", "low.wav", _bursts(0, floor_db=-30.0)[::2], sr=8000)
    _write(tmp_path / "prior", "ok.wav", _bursts(1, floor_db=-30.0))
    report = audit_corpora({"prior": tmp_path / "prior"}, SR, NO_VAD, segment_seconds=5.0)
    prior = report["corpora"]["prior"]
    assert prior["native_sample_rates"] == {"8000": 1, "16000": 1} and prior["files_below_model_rate"] == 1
    kinds = {w["kind"] for w in report["warnings"]}
    assert {"sample_rate", "too_short"} <= kinds
    assert all(w["corpus"] == "prior" and w["kind"] in KINDS and w["message"] for w in report["warnings"])


def test_corrupt_and_silent_files_are_skipped_and_named(tmp_path):
    folder = _corpus(tmp_path / "prior", 2, floor_db=-30.0)
    (folder / "broken.wav").write_bytes(b"RIFF not really a wave file")
    _write(folder, "silent.wav", np.zeros(SR))
    summary, files = audit_corpus(folder, SR, NO_VAD)
    assert summary["files_found"] == 4 and summary["files_audited"] == 2 and len(files) == 2
    assert any("broken.wav" in s for s in summary["skipped"]) and any("silent.wav" in s for s in summary["skipped"])


def test_large_corpora_are_sampled_reproducibly(tmp_path):
    folder = _corpus(tmp_path / "many", 6, floor_db=-30.0, seconds=3.0)
    settings = AuditSettings(max_files=3, max_seconds=1.0, seed=7, vad=False)
    first, _ = audit_corpus(folder, SR, settings)
    again, _ = audit_corpus(folder, SR, settings)
    assert first == again
    assert first["sampled"] and first["files_found"] == 6 and first["files_audited"] == 3
    assert first["seconds_estimated"] and first["seconds"] == pytest.approx(18.0, abs=0.1)
    assert first["seconds_measured"] <= 3 * 1.0 + 0.05  # crops of max_seconds


def test_missing_or_empty_folder_names_it(tmp_path):
    with pytest.raises(CorpusError, match="does not exist") as error:
        audit_corpus(tmp_path / "nowhere", SR, NO_VAD)
    assert str(tmp_path / "nowhere") in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no audio files") as error:
        audit_corpus(tmp_path / "empty", SR, NO_VAD)
    assert str(tmp_path / "empty") in str(error.value)


# --------------------------------------------------------------------------------------------
# Configurations, the command, training


def _compose(config: str, *overrides: str):
    with initialize_config_dir(str(usedddp.config.CONFIG_DIR), version_base="1.3"):
        return compose(config, overrides=list(overrides))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """prior (band-limited, gated, one corrupt file), noise, and noisy data folders."""
    root = tmp_path_factory.mktemp("corpora")
    prior = _corpus(root / "prior", 3, floor_db=None, lowpass_hz=4000)
    (prior / "corrupt.flac").write_bytes(b"fLaC but nothing else")
    noise = root / "noise"
    for i in range(2):
        _write(noise, f"n{i}.wav", 0.05 * _white(3, 50 + i))
    return {"prior": prior, "noise": noise, "data": _corpus(root / "data", 3, floor_db=-30.0)}


def _overrides(folders, *extra):
    return ["prior=folder", f"prior.dir={folders['prior']}", "noise=folder", f"noise.dir={folders['noise']}",
            "data=folder", f"data.root={folders['data']}", *extra]


def test_demo_bandlimited_prior_warns_against_demo_data():
    """The measured failure: the old embedded prior against the demo data; the in-domain prior
    of the same corpus draws neither warning."""
    report = audit_config(_compose("audit", "prior=demo_bandlimited", "data=demo", "output=unused"))
    assert set(report["corpora"]) == {"prior", "noise", "data", "test"}
    kinds = {w["kind"] for w in report["warnings"] if w["corpus"] == "prior"}
    assert kinds & {"bandwidth", "noise_floor"}, report["warnings"]
    report = audit_config(_compose("audit", "prior=demo_matched", "data=demo", "output=unused"))
    assert not [w for w in report["warnings"] if w["kind"] in ("bandwidth", "noise_floor")], report["warnings"]


def test_cli_writes_audit_and_refuses_to_overwrite(tmp_path, folders, capsys):
    out = tmp_path / "audit"
    cmd = [sys.executable, "-m", "usedddp.audit", *_overrides(folders, f"output={out}", f"hydra.run.dir={tmp_path / 'hydra'}")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-4000:]
    report = json.loads((out / "audit.json").read_text())
    assert set(report) >= {"corpora", "warnings", "settings", "comparisons"}
    assert set(report["corpora"]) == {"prior", "noise", "data"}  # data=folder has no test references
    for corpus in report["corpora"].values():
        assert {"files_audited", "native_sample_rates", "bandwidth_hz", "floor_db", "silent_frames",
                "active_level_dbfs", "speech_frames", "skipped"} <= set(corpus)
    assert {"max_files", "max_seconds", "seed", "sample_rate", "thresholds"} <= set(report["settings"])
    assert report["warnings"] and all(set(w) >= {"kind", "corpus", "message"} and w["kind"] in KINDS for w in report["warnings"])
    assert ("bandwidth", "prior") in {(w["kind"], w["corpus"]) for w in report["warnings"]}
    assert any("corrupt.flac" in s for s in report["corpora"]["prior"]["skipped"])
    assert "corrupt.flac" in proc.stdout and "WARNING bandwidth (prior)" in proc.stdout
    md = (out / "audit.md").read_text()
    assert "| files audited / found | 3 / 4 | 2 / 2 | 3 / 3 |" in md and "## Warnings" in md and "corrupt.flac" in md
    assert not (tmp_path / "outputs").exists()

    # Refused without overwrite=true (the earlier audit is left alone), replaced with it.
    before = (out / "audit.json").read_text()
    assert run(_compose("audit", *_overrides(folders, f"output={out}"))) == 2
    assert "overwrite=true" in capsys.readouterr().err and (out / "audit.json").read_text() == before
    assert run(_compose("audit", *_overrides(folders, f"output={out}", "overwrite=true", "audit.seed=3"))) == 0
    assert json.loads((out / "audit.json").read_text())["settings"]["seed"] == 3


def test_cli_errors(tmp_path, folders, capsys):
    assert run(_compose("audit", *_overrides(folders))) == 2
    assert "output=DIR is required" in capsys.readouterr().err
    missing = tmp_path / "missing"
    assert run(_compose("audit", *_overrides(folders, f"output={tmp_path / 'out'}", f"noise.dir={missing}"))) == 2
    assert f"{missing}: folder does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_training_runs_the_audit_unless_disabled(folders, caplog):
    cfg = _compose("train", *_overrides(folders))
    assert cfg.audit.enabled is True
    with caplog.at_level(logging.INFO, logger="usedddp.train"):
        report = usedddp.train._audit(cfg)
    assert {(w["kind"], w["corpus"]) for w in report["warnings"]} >= {("bandwidth", "prior"), ("noise_floor", "prior")}
    logged = [r.getMessage() for r in caplog.records if r.name == "usedddp.train"]
    assert any("corpus audit" in m and "bandwidth, median file" in m for m in logged)  # the table
    assert any(m.startswith("audit: bandwidth (prior)") for m in logged)
    hparams = compact(report)
    json.dumps(hparams)
    assert hparams["n_warnings"] == len(report["warnings"]) and hparams["warnings"][0].startswith(report["warnings"][0]["kind"])
    assert hparams["prior"]["files"] == 3 and hparams["prior"]["bandwidth_hz"] < 6000
    assert usedddp.train._audit(_compose("train", *_overrides(folders, "audit.enabled=false"))) is None


def test_training_audit_raises_for_a_missing_folder(tmp_path, folders):
    with pytest.raises(CorpusError, match="does not exist"):
        usedddp.train._audit(_compose("train", *_overrides(folders, f"prior.dir={tmp_path / 'nope'}")))


def test_median_f0_of_harmonic_voices():
    """A voice's register from its loud frames: harmonic tones at 120 and 240 Hz (a male and a
    female register), with quiet noise between them that must not count."""
    t = np.arange(16000) / 16000
    for f0 in (120.0, 240.0):
        voiced = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6))
        x = np.concatenate([0.3 * voiced, 1e-3 * np.random.default_rng(0).standard_normal(8000)])
        assert median_f0_hz(x, 16000, active_level_db(x, 16000)) == pytest.approx(f0, rel=0.05)


def test_one_voice_prior_warns_that_it_does_not_cover_the_data_voices():
    """The wideband demo prior (one female voice) against the demo data (two female voices and a
    male one): a `voice_range` warning naming the uncovered share, and no bandwidth or floor
    warning; the in-domain prior (the test speakers themselves) covers them, and so does the one
    voice pitch-shifted over 100-250 Hz."""
    report = audit_config(_compose("audit", "prior=demo", "data=demo", "data.prior_pitch_hz=null",
                                   "data.prior_speed_perturb=[0.8,1.2]", "output=unused"))
    warnings = {(w["kind"], w["corpus"]): w for w in report["warnings"]}
    assert ("voice_range", "prior") in warnings, report["warnings"]
    assert not {"bandwidth", "noise_floor"} & {kind for kind, _ in warnings}
    voices = report["comparisons"]["prior_voices"]
    assert voices["data_outside_share"] > 0.25 and voices["speed_perturb"] == [0.8, 1.2]
    matched = audit_config(_compose("audit", "prior=demo_matched", "data=demo", "output=unused"))
    assert "voice_range" not in {w["kind"] for w in matched["warnings"]}
    # The PSOLA pitch shift of the prior draws (data.prior_pitch_hz) covers the male voice.
    shifted = audit_config(_compose("audit", "prior=demo", "data=demo", "data.prior_pitch_hz=[100,250]", "output=unused"))
    assert "voice_range" not in {w["kind"] for w in shifted["warnings"]}, shifted["warnings"]
    assert shifted["comparisons"]["prior_voices"]["pitch_shift_hz"] == [100.0, 250.0]
    assert shifted["settings"]["prior_pitch_hz"] == [100.0, 250.0]


# --------------------------------------------------------------------------------------------
# Bandwidth against the speech of noisy data, not its noise (issue 25)

# Wideband ambiences of the embedded noise prior: their LTAS reaches 8 kHz, so noisy data made
# with them read wideband whatever their speech holds.
WIDEBAND_NOISE = ("megaglest-data/autumn__rain.flac", "megaglest-data/birch_forest__day.flac",
                  "megaglest-data/fernland__night.flac", "minetest-data/fire__sounds__fire_fire_2.flac",
                  "minetest-data/fire__sounds__fire_large.flac", "wesnoth-1_16-data/birds1.flac")
PRIOR_VOICES = ("clean_prior/tuxpaint_es_Estefania_Ortiz", "clean_prior_matched/tuxpaint_ru_Edwin_Veber")  # F, M
DATA_VOICES = ("tuxpaint_el_Kiriaki_Serafeim", "tuxpaint_ro_Tabbytha")  # other voices, both F
VOICE_FILES = 12


def _chain(x: np.ndarray) -> np.ndarray:
    """A recording chain that rolls off above 5.2 kHz (4th-order Butterworth): the voices' files
    then end (50 dB under the peak) around 6 kHz, about half of them below it, like the wideband
    prior of issue 25 (median file 6188 Hz, 46% below 6 kHz)."""
    from scipy.signal import butter, sosfilt

    return sosfilt(butter(4, 5200, fs=SR, output="sos"), x)


def _speech_beds(root: Path, seed: int = 0) -> dict[str, Path]:
    """From the embedded corpus: a clean prior of two wideband voices (12 files each), the same
    low-passed at 4 kHz, and noisy data of two other voices (24 files) in wideband noise at SNRs
    drawn from 0-15 dB; each also through _chain (prior and data alike: the same kind of
    recordings). Returns the folders by name."""
    rng = np.random.default_rng(seed)

    def clips(folder: Path) -> list[np.ndarray]:
        files = sorted(folder.glob("*.flac"))
        return [load_audio(files[i], SR)[0].numpy().astype(np.float64) for i in sorted(rng.permutation(len(files))[:VOICE_FILES])]

    prior = [x for voice in PRIOR_VOICES for x in clips(DEMO_ROOT / voice)]
    speech = [x for voice in DATA_VOICES for x in clips(DEMO_ROOT / "clean_prior_matched" / voice)]
    noises = [load_audio(DEMO_ROOT / "noise_prior" / name, SR)[0].numpy().astype(np.float64) for name in WIDEBAND_NOISE]
    mixes = []
    for x in speech:
        noise = noises[rng.integers(len(noises))]
        noise = np.tile(noise, -(-len(x) // len(noise)) + 1)
        start = rng.integers(0, len(noise) - len(x) + 1)
        mixes.append((x, noise[start:start + len(x)], rng.uniform(0.0, 15.0)))
    out = {}
    for chained in (False, True):
        tag = "_chain" if chained else ""
        for i, x in enumerate(prior):
            x = _chain(x) if chained else x
            _write(root / f"prior{tag}", f"p{i:02d}.wav", 0.5 * x / np.abs(x).max())
            low = _lowpass(x, 4000)
            _write(root / f"prior{tag}_lp4k", f"p{i:02d}.wav", 0.5 * low / np.abs(low).max())
        for i, (x, noise, snr) in enumerate(mixes):
            x = _chain(x) if chained else x
            y = x + noise * np.sqrt(np.mean(x**2) / np.mean(noise**2) / 10 ** (snr / 10))
            _write(root / f"data{tag}", f"d{i:02d}.wav", 0.5 * y / np.abs(y).max())
        out.update({name: root / name for name in (f"prior{tag}", f"prior{tag}_lp4k", f"data{tag}")})
    return out


@pytest.fixture(scope="module")
def speech_beds(tmp_path_factory) -> dict[str, Path]:
    return _speech_beds(tmp_path_factory.mktemp("speech_beds"))


def _bandwidth_warnings(report: dict) -> list[dict]:
    return [w for w in report["warnings"] if w["kind"] == "bandwidth"]


@pytest.mark.parametrize("chain", ["", "_chain"], ids=["demo_voices", "rolled_off_voices"])
def test_wideband_prior_against_noisy_data_warns_only_when_low_passed(speech_beds, chain):
    """Issue 25's false alarm: the noisy data's noise fills every band, so its files read wideband
    against any clean prior. Against the speech in the noisy data, a wideband prior of other
    voices draws no `bandwidth` warning and the same prior low-passed at 4 kHz does. The rolled-off
    case is the issue's (about half of the prior's files end under 6 kHz): the audit before the
    fix warned there too (see notes); the demo voices' files end at 7.5-8 kHz."""
    data = speech_beds[f"data{chain}"]
    wide = audit_corpora({"prior": speech_beds[f"prior{chain}"], "data": data}, SR)
    assert not _bandwidth_warnings(wide), wide["warnings"]
    row = wide["comparisons"]["prior_vs_data"]
    # The noisy data's whole-file LTAS reaches Nyquist (the noise); its speech does not.
    assert wide["corpora"]["data"]["band_limited_files"] == 0
    assert row["ref_speech_bandwidth_hz"] < row["ref_file_bandwidth_hz"]
    low = audit_corpora({"prior": speech_beds[f"prior{chain}_lp4k"], "data": data}, SR)
    [warning] = _bandwidth_warnings(low)
    assert warning["corpus"] == "prior" and warning["value"] > 0.2
    assert abs(low["corpora"]["prior"]["file_bandwidth_hz"]["median"] - 4000) <= 150
