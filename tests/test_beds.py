"""Tests of scripts/build_beds.py: leave-speakers-out development beds from the demo source corpus.

A tiny bed (a few files per split) is built twice from ../shared/demo-corpus (beside the clone, as
in CI) and checked for what the beds promise: no prior voice among the noisy/test voices, unseen
noise types really absent from the noise prior, the recipe's SNRs in the written mixtures (from
_truth), byte-identical rebuilds, and a data module that loads the bed as experiment=vctk_unsup.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import usedddp.config
from usedddp.audit import active_level_db

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "demo-corpus"
SIZES = {"train": 6, "test": 4, "prior_per_voice": 2, "unseen_types": 4, "utterance_seconds": (1.5, 5.0)}
BED = "cs_male"

pytestmark = pytest.mark.skipif(not (CORPUS / "MANIFEST.csv").is_file(),
                                reason=f"the demo source corpus is not at {CORPUS} (CI has it beside the clone)")


def _script():
    """scripts/build_beds.py as a module (registered, so that its dataclasses resolve)."""
    if "build_beds" not in sys.modules:
        spec = importlib.util.spec_from_file_location("build_beds", ROOT / "scripts" / "build_beds.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["build_beds"] = module
        spec.loader.exec_module(module)
    return sys.modules["build_beds"]


@pytest.fixture(scope="module")
def beds(tmp_path_factory) -> tuple[Path, Path, dict]:
    """The same tiny bed built twice with one seed: (first, second, first's recipe)."""
    script = _script()
    out = tmp_path_factory.mktemp("beds")
    first = script.build(CORPUS, out / "a", [BED], 3, SIZES)[BED]
    script.build(CORPUS, out / "b", [BED], 3, SIZES)
    return out / "a" / BED, out / "b" / BED, first


def _voice_of_name(name: str) -> str:
    return name.split("__")[0]


def test_leave_speakers_out(beds):
    bed, _, recipe = beds
    sp = recipe["speakers"]
    assert sp["test"] == sp["noisy_train"] == ["fillets_cs_big_fish_M"] and len(sp["prior"]) == 4
    assert not set(sp["prior"]) & set(sp["test"] + sp["noisy_train"])
    assert {sp["sex"][v] for v in sp["prior"]} == {"F", "M"}  # several voices of both sexes, no pitch trick
    # From the files themselves: the prior's speaker folders and its sources, the noisy files' names.
    prior_voices = {p.name for p in (bed / "prior_clean").iterdir()}
    assert prior_voices == set(sp["prior"])
    assert {Path(f["source"]["path"]).parent.name for f in recipe["files"]["prior_clean"]} == prior_voices
    for folder in ("noisy_trainset_28spk_wav", "noisy_testset_wav", "clean_testset_wav"):
        names = [p.name for p in (bed / folder).glob("*.wav")]
        assert names and {_voice_of_name(n) for n in names} == {"fillets_cs_big_fish_M"}, folder
    # Training and test utterances are disjoint, and none is a prior file.
    train = {r["speech"]["path"] for r in recipe["files"]["noisy_train"]}
    test = {r["speech"]["path"] for r in recipe["files"]["noisy_test"]}
    prior = {f["source"]["path"] for f in recipe["files"]["prior_clean"]}
    assert len(train) == SIZES["train"] and len(test) == SIZES["test"] and not (train & test) and not (prior & (train | test))
    # No clean counterpart of the noisy training set where prior=vctk would find it.
    assert not (bed / "clean_trainset_28spk_wav").exists()


def test_unseen_noise_types_are_absent_from_the_noise_prior(beds):
    bed, _, recipe = beds
    script = _script()
    unseen = set(recipe["unseen_noise_types"])
    assert len(unseen) == SIZES["unseen_types"]
    # Types of the noise prior's files, from the corpus manifest by the written file's name.
    with (CORPUS / "MANIFEST.csv").open(newline="") as f:
        by_name = {(Path(r["path"]).parent.name, Path(r["path"]).stem): r for r in csv.DictReader(f) if r["kind"] == "noise"}
    written = sorted((bed / "prior_noise").rglob("*.wav"))
    assert len(written) == len(recipe["files"]["prior_noise"]) > 20
    prior_types = {script.noise_type(by_name[(p.parent.name, p.stem)]) for p in written}
    assert not prior_types & unseen
    assert {f["type"] for f in recipe["files"]["prior_noise"]} == prior_types == set(recipe["noise"]["seen_noise_types"])
    # The noisy data hold the unseen types (every other file) and share no file with the noise prior.
    for split in ("noisy_train", "noisy_test"):
        records = recipe["files"][split]
        assert {r["noise_type"] for r in records if not r["noise_seen"]} <= unseen
        assert sum(not r["noise_seen"] for r in records) == -(-len(records) // 2)
        assert all(r["noise_type"] not in unseen for r in records if r["noise_seen"])
    data_sources = {r["noise"]["path"] for s in ("noisy_train", "noisy_test") for r in recipe["files"][s]}
    assert not data_sources & {f["source"]["path"] for f in recipe["files"]["prior_noise"]}
    # No vocal sound anywhere (speech in the noise would be learnt as noise).
    used = {f["source"]["path"] for f in recipe["files"]["prior_noise"]} | data_sources
    assert not [p for p in used if "Laugh" in p or "PartyNoise" in p or "Substation" in p]
    conditions = list(csv.DictReader((bed / "testset_conditions.csv").open(newline="")))
    assert [c["file"] for c in conditions] == [r["file"] for r in recipe["files"]["noisy_test"]]
    assert {c["noise"] for c in conditions} == {"seen", "unseen"}


def test_mixtures_match_the_recipe(beds):
    """noisy = clean + noise exactly (16-bit samples), and the SNR of the parts (P.56 speech level
    over the noise's mean power) is the recipe's within 0.05 dB (quantisation)."""
    bed, _, recipe = beds
    for split, folder in (("noisy_train", "noisy_trainset_28spk_wav"), ("noisy_test", "noisy_testset_wav")):
        snrs = []
        for r in recipe["files"][split]:
            noisy, sr = sf.read(bed / folder / r["file"], dtype="int16")
            clean, _ = sf.read(bed / "_truth" / "clean" / r["file"], dtype="int16")
            noise, _ = sf.read(bed / "_truth" / "noise" / r["file"], dtype="int16")
            assert sr == 16000 and len(noisy) == len(clean) == len(noise)
            np.testing.assert_array_equal(noisy.astype(np.int32), clean.astype(np.int32) + noise)
            s, n = clean / 32768.0, noise / 32768.0
            snr = active_level_db(s, sr) - 10 * np.log10(np.mean(n**2))
            assert snr == pytest.approx(r["snr_db"], abs=0.05), r["file"]
            assert np.abs(noisy).max() <= 0.95 * 32768 + 1
            snrs.append(r["snr_db"])
            if split == "noisy_test":
                reference, _ = sf.read(bed / "clean_testset_wav" / r["file"], dtype="int16")
                np.testing.assert_array_equal(reference, clean)
        assert 0.0 <= min(snrs) and max(snrs) <= 15.0
    assert sorted(r["snr_db"] for r in recipe["files"]["noisy_test"]) == [0.0, 5.0, 10.0, 15.0]


def test_same_seed_same_bytes(beds):
    first, second, _ = beds
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert (first / "recipe.json").read_bytes() == (second / "recipe.json").read_bytes()
    differ = [str(p) for p in files if (first / p).read_bytes() != (second / p).read_bytes()]
    assert not differ
    recipe = json.loads((first / "recipe.json").read_text())
    assert recipe["seed"] == 3 and recipe["script"]["version"] >= 1 and len(recipe["script"]["sha256"]) == 64


def test_the_data_module_reads_the_bed_as_vctk_unsup(beds):
    """experiment=vctk_unsup on the bed, as the README's command composes it: stage 3 draws real
    noisy segments with independent prior draws, validation pairs the test set by name."""
    bed, _, recipe = beds
    with initialize_config_dir(str(usedddp.config.CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[
            "experiment=vctk_unsup", f"data.root={bed}", "prior=folder", f"prior.dir={bed / 'prior_clean'}",
            "noise=folder", f"noise.dir={bed / 'prior_noise'}", "model=tiny_stft", "trainer=default",
            "data.batch_size=2", "data.segment_seconds=1.0", "data.num_workers=0"])
    datamodule = instantiate(cfg.data)
    datamodule.training_stage = 3
    datamodule.setup("fit")
    assert len(datamodule.noisy_train) == SIZES["train"] and len(datamodule.prior) == len(recipe["files"]["prior_clean"])
    assert datamodule.has_references and len(datamodule.val_dataset) == SIZES["test"]
    batch = next(iter(datamodule.train_dataloader()))
    shapes = {f.name: tuple(getattr(batch, f.name).shape) for f in dataclasses.fields(batch)}
    assert set(shapes) == {"noisy", "clean_prior", "noise_prior"}
    assert all(shape[0] == 2 and shape[-1] == 16000 for shape in shapes.values()), shapes


def test_refuses_a_missing_corpus_and_an_existing_bed(tmp_path, capsys):
    script = _script()
    assert script.main(["--corpus", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert f"{tmp_path / 'nowhere'}: corpus folder does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert script.main(["--corpus", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert f"{tmp_path / 'empty' / 'MANIFEST.csv'}: MANIFEST.csv not found" in capsys.readouterr().err
    (tmp_path / "out" / BED).mkdir(parents=True)
    (tmp_path / "out" / BED / "keep.txt").write_text("mine")
    assert script.main(["--corpus", str(CORPUS), "--out", str(tmp_path / "out"), "--bed", BED]) == 2
    assert "--overwrite" in capsys.readouterr().err and (tmp_path / "out" / BED / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "out" / f".{BED}.partial").exists()


def test_sources_at_another_rate_are_resampled(tmp_path):
    """The corpus is 16 kHz today; a 48 kHz source would be resampled (polyphase), not misread."""
    script = _script()
    t = np.arange(48000) / 48000
    sf.write(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 1000 * t), 48000, subtype="PCM_16")
    x = script.read_audio(tmp_path, "tone.wav")
    assert len(x) == 16000
    spectrum = np.abs(np.fft.rfft(x))
    assert np.argmax(spectrum) == 1000  # 1 Hz bins over 1 s
