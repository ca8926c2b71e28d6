import dataclasses
import logging
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from usedddp.assets import DEMO_ROOT
from usedddp.audio import (AudioFileError, CorpusError, audio_info, find_audio_files, load_audio,
                           save_audio)
from usedddp.data import (AudioCorpus, SimulatedBatch, SimulatedMixtures, UnpairedBatch, UnpairedNoisy,
                          USEDataModule, ValidationBatch, ValidationClips, collate_simulated, collate_unpaired,
                          collate_validation, pair_by_relative_path)

SR = 16000


def tone(seconds, sr=SR, freq=440.0, amp=0.5, channels=1):
    t = np.arange(round(seconds * sr)) / sr
    x = amp * np.sin(2 * np.pi * freq * t)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def write(path, data, sr=SR, subtype=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr, subtype=subtype)
    return path


def make_folder(root, n, seconds=1.0, seed=0, amp=0.3):
    rng = np.random.default_rng(seed)
    for i in range(n):
        write(root / f"f{i:02d}.wav", amp * rng.standard_normal(round(seconds * SR)).clip(-3, 3) / 3)
    return root


def snr_db(clean, noise):
    return 10 * math.log10(float(clean.pow(2).mean() / noise.pow(2).mean()))


def level_db(x):
    return 20 * math.log10(float(x.pow(2).mean().sqrt()))


# --- audio I/O ---------------------------------------------------------------------------------

@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "FLOAT"])
def test_load_audio_downmixes_and_resamples_to_mono_16k(tmp_path, subtype):
    stereo = tone(0.5, sr=44100, channels=2)
    stereo[:, 1] *= 0.5  # unequal channels: the downmix must be their mean
    path = write(tmp_path / "x.wav", stereo, sr=44100, subtype=subtype)
    wav = load_audio(path, SR)
    assert wav.dtype == torch.float32 and wav.shape == (1, math.ceil(len(stereo) * SR / 44100))
    mid = wav[0, 1000:-1000]
    assert abs(float(mid.abs().max()) - 0.375) < 0.02  # mean of 0.5 and 0.25 amplitudes
    assert audio_info(path) == (len(stereo), 44100, 2)


@pytest.mark.parametrize("name", ["x.flac", "x.ogg", "x.WAV"])
def test_load_audio_formats_and_odd_rates(tmp_path, name):
    path = write(tmp_path / name, tone(0.3, sr=22051), sr=22051)
    wav = load_audio(path, SR)
    assert wav.shape[0] == 1 and abs(wav.shape[1] - 0.3 * SR) <= 10
    assert torch.isfinite(wav).all()


def test_load_audio_errors_name_the_file(tmp_path):
    empty = write(tmp_path / "empty.wav", np.zeros(0))
    nan = write(tmp_path / "nan.wav", np.array([0.1, np.nan, 0.2] * 100), subtype="FLOAT")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage, not a wave file at all")
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    for path, problem in [(empty, "empty"), (nan, "NaN"), (corrupt, "cannot be read"), (folder, "directory"),
                          (tmp_path / "missing.wav", "does not exist")]:
        with pytest.raises(AudioFileError, match=problem) as e:
            load_audio(path, SR)
        assert str(path) in str(e.value)
    with pytest.raises(AudioFileError, match="cannot be read"):
        audio_info(corrupt)


def test_find_audio_files(tmp_path):
    write(tmp_path / "b" / "UPPER.WAV", tone(0.1))
    write(tmp_path / "a.flac", tone(0.1))
    (tmp_path / "dir.wav").mkdir()
    (tmp_path / "notes.txt").write_text("not audio")
    assert find_audio_files(tmp_path) == [tmp_path / "a.flac", tmp_path / "b" / "UPPER.WAV"]
    with pytest.raises(CorpusError, match="does not exist") as e:
        find_audio_files(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    only_junk = tmp_path / "junk"
    (only_junk / "x.wav").mkdir(parents=True)
    with pytest.raises(CorpusError, match=r"\.wav, \.flac, \.ogg") as e:
        find_audio_files(only_junk)
    assert str(only_junk) in str(e.value)


def test_save_audio_roundtrip_and_overwrite(tmp_path):
    path = tmp_path / "deep" / "out.wav"
    save_audio(path, torch.tensor([[0.5, -2.0, 0.25]]), SR)
    data, sr = sf.read(str(path))
    assert sr == SR and sf.info(str(path)).subtype == "PCM_16"
    assert np.allclose(data, [0.5, -1.0, 0.25], atol=1e-4)  # clipped to [-1, 1]
    with pytest.raises(FileExistsError, match="out.wav"):
        save_audio(path, np.zeros(3), SR)
    save_audio(path, np.zeros(3), SR, overwrite=True)
    save_audio(tmp_path / "x.flac", np.zeros(10), SR)
    assert sf.info(str(tmp_path / "x.flac")).format == "FLAC"


# --- corpus ------------------------------------------------------------------------------------

def test_corpus_skips_and_records_bad_files(tmp_path, caplog):
    root = make_folder(tmp_path / "c", 3)
    write(root / "short.wav", tone(0.01))
    write(root / "nan.wav", np.full(SR, np.nan), subtype="FLOAT")
    (root / "corrupt.flac").write_bytes(b"fLaC nonsense")
    with caplog.at_level(logging.WARNING, logger="usedddp.data"):
        corpus = AudioCorpus(root, SR, min_samples=SR // 10, name="speech")
    assert [p.name for p in corpus.files] == ["f00.wav", "f01.wav", "f02.wav"]
    assert sorted(p.name for p, _ in corpus.skipped) == ["corrupt.flac", "nan.wav", "short.wav"]
    assert sum("skipping" in r.message for r in caplog.records) == 3
    assert corpus.summary() == f"speech: 3 files (3.0 s) from {root}; 3 skipped"


def test_corpus_without_usable_files_names_the_folder(tmp_path):
    root = tmp_path / "bad"
    write(root / "short.wav", tone(0.01))
    with pytest.raises(CorpusError, match="too short") as e:
        AudioCorpus(root, SR, min_samples=SR)
    assert str(root) in str(e.value)


def test_lazy_corpus_drops_file_that_fails_at_load_time(tmp_path):
    root = make_folder(tmp_path / "c", 1)
    write(root / "nan.wav", np.full(SR, np.nan), subtype="FLOAT")  # header is fine, samples are not
    corpus = AudioCorpus(root, SR, min_samples=1, preload=False)
    assert len(corpus) == 2
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        assert torch.isfinite(corpus.random_segment(100, g)).all()
    assert len(corpus) == 1 and [p.name for p, _ in corpus.skipped] == ["nan.wav"]


def test_random_segment_pads_or_tiles_short_files(tmp_path):
    write(tmp_path / "c" / "x.wav", tone(0.1, amp=0.5))
    corpus = AudioCorpus(tmp_path / "c", SR, min_samples=1)
    g = torch.Generator().manual_seed(0)
    padded = corpus.random_segment(SR, g)
    tiled = corpus.random_segment(SR, g, loop=True)
    assert padded.shape == tiled.shape == (1, SR)
    assert int((padded != 0).sum()) <= 0.1 * SR + 1
    assert int((tiled.abs() > 0.1).sum()) > 0.5 * SR
    a = corpus.random_segment(500, torch.Generator().manual_seed(3))
    assert torch.equal(a, corpus.random_segment(500, torch.Generator().manual_seed(3)))


# --- datasets ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    speech = AudioCorpus(make_folder(root / "speech", 4, seconds=1.0, seed=1), SR, 1, name="speech")
    noise = AudioCorpus(make_folder(root / "noise", 3, seconds=0.3, seed=2), SR, 1, name="noise")
    noisy = AudioCorpus(make_folder(root / "noisy", 3, seconds=0.7, seed=3), SR, 1, name="noisy")
    return speech, noise, noisy


def test_simulated_mixtures(corpora):
    speech, noise, _ = corpora
    ds = SimulatedMixtures(speech, noise, num_samples=8000, snr_db=(-5, 15), level_db=(-35, -15), length=20, seed=7)
    snrs = []
    for i in range(len(ds)):
        item = ds[i]
        assert isinstance(item, SimulatedBatch) and item.noisy.shape == (1, 8000)
        assert torch.equal(item.noisy, item.clean + item.noise)
        assert item.clean_prior is item.clean and item.noise_prior is item.noise
        drawn_snr, drawn_level = ds.conditions(i)
        assert -5 <= drawn_snr <= 15 and abs(snr_db(item.clean, item.noise) - drawn_snr) < 0.1
        assert level_db(item.noisy) <= drawn_level + 0.1
        assert max(float(x.abs().max()) for x in (item.noisy, item.clean, item.noise)) <= 0.99 + 1e-6
        snrs.append(drawn_snr)
    assert len(set(snrs)) == len(snrs)
    assert torch.equal(ds[3].noisy, ds[3].noisy)  # deterministic per (seed, index)
    other = SimulatedMixtures(speech, noise, 8000, length=20, seed=8)
    assert other.conditions(3) != ds.conditions(3) and not torch.equal(other[3].noisy, ds[3].noisy)


def test_simulated_mixture_level(corpora):
    speech, noise, _ = corpora
    ds = SimulatedMixtures(speech, noise, 4000, snr_db=(0, 0), level_db=(-30, -30), length=4, seed=0)
    for i in range(len(ds)):
        assert abs(level_db(ds[i].noisy) + 30) < 0.1


def test_unpaired_noisy(corpora):
    speech, noise, noisy = corpora
    ds = UnpairedNoisy(noisy, speech, noise, num_samples=4000, level_db=(-35, -15), length=8, seed=0)
    item = ds[0]
    assert isinstance(item, UnpairedBatch)
    assert not hasattr(item, "clean") and not hasattr(item, "noise")
    assert {f.name for f in dataclasses.fields(UnpairedBatch)} == {"noisy", "clean_prior", "noise_prior"}
    batch = collate_unpaired([ds[i] for i in range(4)])
    for x in (batch.noisy, batch.clean_prior, batch.noise_prior):
        assert x.shape == (4, 1, 4000)
        assert all(-35.1 <= level_db(row) <= -14.9 for row in x)
    assert torch.equal(ds[5].clean_prior, ds[5].clean_prior)


def test_collate_simulated_shapes(corpora):
    speech, noise, _ = corpora
    ds = SimulatedMixtures(speech, noise, 1000, length=3)
    batch = collate_simulated([ds[i] for i in range(3)])
    assert batch.noisy.shape == batch.clean.shape == batch.noise.shape == (3, 1, 1000)


def test_pairing_and_validation_clips(tmp_path):
    write(tmp_path / "noisy" / "a" / "x.wav", tone(2.0, amp=0.1))
    write(tmp_path / "noisy" / "y.wav", tone(1.0))
    write(tmp_path / "clean" / "a" / "x.flac", tone(2.0, amp=0.05))
    write(tmp_path / "clean" / "z.flac", tone(1.0))
    pairs, lone_noisy, lone_clean = pair_by_relative_path(tmp_path / "noisy", tmp_path / "clean")
    assert pairs == [(tmp_path / "noisy" / "a" / "x.wav", tmp_path / "clean" / "a" / "x.flac")]
    assert lone_noisy == [tmp_path / "noisy" / "y.wav"] and lone_clean == [tmp_path / "clean" / "z.flac"]
    ds = ValidationClips([pairs[0][0]], [pairs[0][1]], SR, max_samples=SR, names=["a/x.wav"])
    batch = collate_validation([ds[0]])
    assert isinstance(batch, ValidationBatch) and batch.noisy.shape == batch.clean.shape == (1, 1, SR)
    assert batch.name == ["a/x.wav"] and abs(level_db(batch.noisy) + 25) < 0.01
    assert torch.allclose(batch.clean, batch.noisy / 2, atol=1e-4)  # same gain on the reference


# --- DataModule --------------------------------------------------------------------------------

def demo_module(**overrides):
    kw = dict(sample_rate=SR, segment_seconds=0.5, batch_size=4, num_workers=0,
              prior_dir=str(DEMO_ROOT / "clean_prior"), noise_dir=str(DEMO_ROOT / "noise_prior"),
              noisy_train_dir=str(DEMO_ROOT / "noisy_trainset"), val_noisy_dir=str(DEMO_ROOT / "noisy_testset"),
              val_clean_dir=str(DEMO_ROOT / "clean_testset"), val_clips=3, val_max_seconds=1.0, train_length=16)
    kw.update(overrides)
    return USEDataModule(**kw)


def test_datamodule_on_demo_assets_stages_1_and_3():
    dm = demo_module(num_workers=1)
    dm.setup("fit")
    assert dm.has_references
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, SimulatedBatch) and batch.noisy.shape == (4, 1, 8000)
    val = list(dm.val_dataloader())
    assert len(val) == 3 and all(v.clean is not None and v.noisy.shape == v.clean.shape for v in val)
    assert val[0].noisy.shape == (1, 1, SR) and val[0].name[0].endswith(".flac")
    dm.training_stage = 3
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.drop_last and loader.persistent_workers
    batch = next(iter(loader))
    assert isinstance(batch, UnpairedBatch) and batch.noisy.shape == batch.clean_prior.shape == (4, 1, 8000)


def test_datamodule_missing_clean_dir_is_reference_free(tmp_path, caplog):
    dm = demo_module(val_clean_dir=str(tmp_path / "nope"))
    with caplog.at_level(logging.WARNING, logger="usedddp.data"):
        dm.setup("fit")
    assert not dm.has_references and "reference-free" in caplog.text
    assert all(v.clean is None for v in dm.val_dataloader())


def test_datamodule_holds_out_noisy_train_files(tmp_path):
    dm = demo_module(val_noisy_dir=None, val_clean_dir=None, training_stage=3, val_clips=4)
    dm.setup("fit")
    assert not dm.has_references
    held = {v.name[0] for v in dm.val_dataloader()}
    train = {p.relative_to(DEMO_ROOT / "noisy_trainset").as_posix() for p in dm.noisy_train.files}
    assert len(held) == 4 and not held & train
    assert len(train) + 4 == len(find_audio_files(DEMO_ROOT / "noisy_trainset"))


def test_datamodule_simulated_validation_and_stage3_requirement(tmp_path):
    dm = demo_module(noisy_train_dir=None, val_noisy_dir=None, val_clean_dir=None)
    dm.setup("fit")
    val = list(dm.val_dataloader())
    assert dm.has_references and len(val) == 3 and all(v.clean is not None for v in val)
    for v in val:  # fixed mixtures at the -25 dBFS validation level, unless the peak limiter lowered it
        assert -25.1 < level_db(v.noisy) < -24.9 or float(v.noisy.abs().max()) > 0.98
        assert not torch.equal(v.noisy, v.clean)
    assert torch.equal(list(dm.val_dataloader())[0].noisy, val[0].noisy)  # fixed, not redrawn
    dm.training_stage = 3
    with pytest.raises(CorpusError, match="noisy_train_dir"):
        dm.train_dataloader()


def test_speed_perturbation_moves_pitch_and_keeps_length(tmp_path):
    """A 400 Hz tone drawn at speed factor f comes out at 400 f Hz, num_samples long; the draw
    is reproducible, and without `speed` nothing extra is drawn (items stay as they were)."""
    (tmp_path / "tone").mkdir()
    t = np.arange(3 * SR) / SR
    sf.write(tmp_path / "tone" / "a.wav", 0.5 * np.sin(2 * np.pi * 400 * t), SR)
    corpus = AudioCorpus(tmp_path / "tone", SR, min_samples=1)
    n = SR // 2
    peaks = []
    for seed in range(6):
        seg = corpus.random_segment(n, torch.Generator().manual_seed(seed), speed=(0.8, 1.2))
        assert seg.shape == (1, n)
        again = corpus.random_segment(n, torch.Generator().manual_seed(seed), speed=(0.8, 1.2))
        assert torch.equal(seg, again)
        g = torch.Generator().manual_seed(seed)
        factor = int(torch.randint(80, 121, (1,), generator=g)) / 100
        spectrum = np.abs(np.fft.rfft(seg[0].numpy() * np.hanning(n)))
        peak = np.argmax(spectrum) * SR / n
        assert peak == pytest.approx(400 * factor, abs=2 * SR / n)
        peaks.append(peak)
    assert len(set(peaks)) > 2  # the factor varies with the draw
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(corpus.random_segment(n, g1), corpus.random_segment(n, g2, speed=None))


def _band_db(x: np.ndarray, lo: float, hi: float) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return 10 * np.log10(spectrum[(f >= lo) & (f < hi)].sum() / spectrum.sum())


def test_pitch_shift_moves_the_median_f0_and_keeps_the_band(tmp_path):
    """PSOLA moves a voiced signal's median F0 to the drawn target (the audit's own detector),
    keeps its length and its 6-8 kHz band (where speed perturbation to the same F0 empties it),
    draws reproducibly, and leaves an unvoiced segment as it was."""
    from usedddp.audit import median_f0_hz
    from usedddp.data.corpus import pitch_range, pitch_shift_psola

    t = np.arange(2 * SR) / SR
    f0 = 220 * (1 + 0.03 * np.sin(2 * np.pi * 3 * t))  # a sung vowel: 220 Hz with vibrato
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 36)) * (0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t) ** 2)
    voiced = (0.2 * voiced / np.abs(voiced).max()).astype(np.float32)
    (tmp_path / "voice").mkdir()
    sf.write(tmp_path / "voice" / "a.wav", voiced, SR)
    level = 10 * np.log10(np.mean(voiced ** 2))
    assert median_f0_hz(voiced, SR, level) == pytest.approx(220, rel=0.05)
    for target in (120.0, 260.0):
        out = pitch_shift_psola(torch.from_numpy(voiced)[None], SR, target)[0].numpy()
        assert out.shape == voiced.shape
        assert median_f0_hz(out, SR, 10 * np.log10(np.mean(out ** 2))) == pytest.approx(target, rel=0.08)
        assert _band_db(out, 6000, 8000) == pytest.approx(_band_db(voiced, 6000, 8000), abs=4.0)
    slowed = torch.from_numpy(voiced)[None]
    import torchaudio.functional as AF
    slowed = AF.resample(slowed, 120, 220)[0].numpy()  # speed perturbation by 120/220
    assert _band_db(slowed, 6000, 8000) < _band_db(voiced, 6000, 8000) - 30
    silence = torch.zeros(1, SR)
    assert torch.equal(pitch_shift_psola(silence, SR, 120.0), silence)

    corpus = AudioCorpus(tmp_path / "voice", SR, min_samples=1)
    draws = [corpus.random_segment(SR, torch.Generator().manual_seed(s), pitch_hz=(100, 250)) for s in (0, 0, 1)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    with pytest.raises(ValueError, match="prior_pitch_hz"):
        pitch_range([250, 100])
