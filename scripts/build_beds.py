#!/usr/bin/env python
"""Build leave-speakers-out development beds from the demo source corpus (issue 25, part 1).

    python scripts/build_beds.py --corpus ../shared/demo-corpus --out DIR [--bed NAME ...] [--seed N] [--overwrite]

Each bed DIR/NAME is a folder in the VCTK-DEMAND layout that `experiment=vctk_unsup` reads:

    python -m usedddp.train experiment=vctk_unsup data.root=BED prior=folder prior.dir=BED/prior_clean \\
        noise=folder noise.dir=BED/prior_noise model=tiny_stft trainer=default ...

- noisy_trainset_28spk_wav/   the real-noisy stand-in of stage 3: utterances of the bed's test voice in noise
- noisy_testset_wav/, clean_testset_wav/   test pairs (same names): other utterances of the test voice
- prior_clean/<speaker>/      the clean prior: several other voices, never the test voice (no pitch shift)
- prior_noise/<package>/      the noise prior: files of the "seen" noise types only; the noisy data also hold
                              "unseen" types, whose files never appear here (recipe.json: unseen_noise_types)
- testset_conditions.csv      per test file: speaker, noise file and type, seen/unseen, SNR (usedddp.evaluate reads it)
- _truth/clean/, _truth/noise/   the speech and the noise part of every noisy file (train and test, same names;
                              noisy = clean + noise exactly, in 16-bit samples); no config reads them
- recipe.json, README.md      speakers per split, every file's sources, licences, noise type, SNR, gain; seed,
                              script version and commit

There is deliberately no clean_trainset_28spk_wav: the clean speech of the noisy training files is
the in-domain prior the bed exists to avoid, so `prior=vctk` (the experiment's default) fails loudly
instead of reading it. Deterministic given --seed: each bed draws from its own generator seeded
with (seed, bed name), and builds byte-identically. Needs numpy, scipy, soundfile and usedddp
(the ITU-T P.56 active level of usedddp.audit sets the SNRs).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import shutil
import subprocess
import sys
import zlib
from collections import defaultdict
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from usedddp.audit import active_level_db

SCRIPT_VERSION = 1
SR = 16000
PEAK = 0.95  # a mixture and its parts are scaled down together so that no sample exceeds this
FULL_SCALE = 32768  # 16-bit samples: the parts are quantised apart and the mixture is their exact sum
FADE_SECONDS = 0.02  # fades of cropped noise loops and the crossfade where a short noise file is tiled
MAX_NOISE_PRIOR_SECONDS = 10.0  # long loops are cropped for the noise prior, so no one file dominates
MIN_NOISE_SECONDS = 1.0  # clicks and single barks would be tiled into periodic artefacts
UNSEEN_MIN_SECONDS = 3.0
UNSEEN_LONG_SECONDS = 20.0
PRIOR_SECONDS = (2.0, 8.0)  # prior utterances: a 2 s training segment (configs/data/vctk.yaml) without padding, none dominating
# Speech levels of the noisy files, ITU-T P.56 active level in dBFS (the demo data sit at -27 dBFS).
SPEECH_LEVEL_DBFS = (-32.0, -22.0)
TRAIN_SNR_DB = (0.0, 15.0)  # uniform, 0.5 dB steps
TEST_SNRS_DB = (0.0, 5.0, 10.0, 15.0)  # cycled over the shuffled test files: per-SNR tables have equal cells

# Voice -> sex (MANIFEST.csv names fillets voices with (M)/(F); the tuxpaint readers by name).
VOICES = {
    "fillets_cs_big_fish_M": "M", "fillets_cs_small_fish_F": "F", "fillets_nl_big_fish_M": "M",
    "fillets_nl_small_fish_F": "F", "tuxpaint_be_Kseniya_Buraya": "F", "tuxpaint_el_Kiriaki_Serafeim": "F",
    "tuxpaint_es_Estefania_Ortiz": "F", "tuxpaint_ro_Tabbytha": "F", "tuxpaint_ru_Edwin_Veber": "M",
}
# Left out of every bed's prior: the audit would flag them, and a prior that differs from the data by
# bandwidth or hiss teaches the clean stream that difference (README, the clean prior).
LEFT_OUT_VOICES = {
    "fillets_nl_big_fish_M": "band-limited: 6-8 kHz 55-66 dB under the spectral peak, digital silence between words",
    "fillets_nl_small_fish_F": "band-limited: 6-8 kHz 55-63 dB under the spectral peak, digital silence between words",
    "tuxpaint_be_Kseniya_Buraya": "high-frequency hiss: 6-8 kHz only 19 dB under the peak",
    "tuxpaint_ro_Tabbytha": "audible room noise: two of its demo test references read WADA-SNR 4.9 and -1.2 dB",
}
# Noise that is speech or voice-like: speech in the noise prior teaches the noise discriminator that
# speech is noise. The vocal sounds by category, and the files Silero VAD (usedddp.audit) calls
# speech in over 20% of their 32 ms chunks (measured once on the corpus: the substation hums
# 90-98%, Click 78%, Goose 45%, FireStation1 20%).
# megaglest names one forest ambience per map and time of day: the cricket nights and the birdsong
# days of different maps are one type each.
NOISE_TYPE_ALIASES = {"ambience:nightime": "ambience:night", "ambience:sunny_day": "ambience:day",
                      "ambience:desertday": "ambience:day"}
VOCAL_NOISE_CATEGORIES = ("human:BabyCry", "human:Cough", "human:Laugh", "human:PartyNoise", "human:Sneeze")
VOICE_LIKE_NOISE_FILES = ("noise/lincity-ng-data/Substation3.flac", "noise/lincity-ng-data/Substation4.flac",
                          "noise/lincity-ng-data/SubstationOff.flac", "noise/lincity-ng-data/SubstationOn.flac",
                          "noise/lincity-ng-data/Click.flac", "noise/scratch/Animal__Goose.flac",
                          "noise/lincity-ng-data/FireStation1.flac")


@dataclass(frozen=True)
class BedSpec:
    test_voice: str
    prior_voices: tuple[str, ...]
    description: str


# The three voices new to the demo corpus are fillets_cs_* and tuxpaint_be_*: the test voices are
# the two Czech ones, so the default run's model (trained on the embedded corpus) never heard them.
BEDS = {
    "cs_male": BedSpec("fillets_cs_big_fish_M",
                       ("fillets_cs_small_fish_F", "tuxpaint_el_Kiriaki_Serafeim", "tuxpaint_es_Estefania_Ortiz",
                        "tuxpaint_ru_Edwin_Veber"),
                       "male test voice (Czech voice actor); prior of three female voices and one male"),
    "cs_female": BedSpec("fillets_cs_small_fish_F",
                         ("fillets_cs_big_fish_M", "tuxpaint_el_Kiriaki_Serafeim", "tuxpaint_es_Estefania_Ortiz",
                          "tuxpaint_ru_Edwin_Veber"),
                         "female test voice (Czech voice actor); prior of two female voices and two male"),
}
FOLDERS = {"noisy_train": "noisy_trainset_28spk_wav", "noisy_test": "noisy_testset_wav", "clean_test": "clean_testset_wav",
           "prior_clean": "prior_clean", "prior_noise": "prior_noise", "truth_clean": "_truth/clean",
           "truth_noise": "_truth/noise"}


class BedError(RuntimeError):
    """A bed cannot be built (missing corpus, unsafe output, too few files)."""


# --------------------------------------------------------------------------------------------
# Corpus


def read_manifest(corpus: Path) -> list[dict]:
    if not corpus.is_dir():
        raise BedError(f"{corpus}: corpus folder does not exist (expected the demo source corpus, e.g. ../shared/demo-corpus)")
    manifest = corpus / "MANIFEST.csv"
    if not manifest.is_file():
        raise BedError(f"{manifest}: MANIFEST.csv not found; the corpus folder must hold it (path, kind, speaker, category, ...)")
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"path", "kind", "duration_s", "source_package", "package_version", "license", "speaker", "category"} - set(rows[0] if rows else {})
    if missing:
        raise BedError(f"{manifest}: columns {sorted(missing)} missing")
    return rows


def read_audio(corpus: Path, rel: str) -> np.ndarray:
    """Mono float64 at SR (resampled with a polyphase filter if the file's rate differs)."""
    path = corpus / rel
    if not path.is_file():
        raise BedError(f"{path}: listed in MANIFEST.csv but missing")
    x, sr = sf.read(path, dtype="float64", always_2d=True)
    x = x.mean(axis=1)
    if sr != SR:
        g = gcd(SR, sr)
        x = resample_poly(x, SR // g, sr // g)
    return x


def voice_of(row: dict) -> str:
    return Path(row["path"]).parent.name  # the folder, e.g. fillets_cs_big_fish_M


def noise_type(row: dict) -> str:
    """The category without its variant number: env:fire_fire.2 -> env:fire_fire, ambience:birds3 ->
    ambience:birds (MANIFEST numbers the variants of one sound), and megaglest's per-map names of
    one ambience merged (NOISE_TYPE_ALIASES), so that no variant of an unseen type hides in the
    noise prior."""
    kind = re.sub(r"[.\d]+$", "", row["category"])
    return NOISE_TYPE_ALIASES.get(kind, kind)


def source(row: dict) -> dict:
    return {"path": row["path"], "package": row["source_package"], "version": row["package_version"],
            "license": row["license"], "original_path": row.get("original_path", "")}


def shuffled(items: list, rng: np.random.Generator) -> list:
    return [items[i] for i in rng.permutation(len(items))]


# --------------------------------------------------------------------------------------------
# Noise split


def embedded_noise_sources() -> set[str]:
    """The corpus files the embedded demo noise prior was cut from (what the default run's model saw)."""
    from usedddp.assets import DEMO_ROOT

    manifest = DEMO_ROOT / "MANIFEST.csv"
    if not manifest.is_file():
        return set()
    with manifest.open(newline="") as f:
        return {Path(r["derived_from"]).as_posix() for r in csv.DictReader(f) if r["kind"] == "noise_prior"}


def split_noise(rows: list[dict], rng: np.random.Generator, n_unseen: int) -> dict:
    """Noise files by role: `prior` (the noise prior), `train`/`test` (noisy data), and the
    noise types of the noisy data that no prior file has (`unseen`). Unseen types are drawn
    among types with material enough (_unseen_material) and none in the embedded noise prior, in
    turn from each family (the part before the colon); every other type has its files split
    between the noise prior and the noisy data (single files go to the prior). Near-identical
    files shipped twice (same package, category and duration) count once, so no recording lands
    on both sides."""
    excluded, units = [], {}
    for r in sorted(rows, key=lambda r: r["path"]):
        reason = None
        if r["category"].startswith(VOCAL_NOISE_CATEGORIES):
            reason = "vocal sound"
        elif r["path"] in VOICE_LIKE_NOISE_FILES:
            reason = "voice-like to the VAD (over 20% of chunks)"
        elif float(r["duration_s"]) < MIN_NOISE_SECONDS:
            reason = f"shorter than {MIN_NOISE_SECONDS:g} s"
        elif (key := (r["source_package"], r["category"], r["duration_s"])) in units:
            reason = f"duplicate of {units[key]['path']}"
        if reason:
            excluded.append({"path": r["path"], "reason": reason})
        else:
            units[key] = r
    by_type: dict[str, list[dict]] = defaultdict(list)
    for r in units.values():
        by_type[noise_type(r)].append(r)
    embedded = embedded_noise_sources()
    seen_by_default_model = {noise_type(r) for r in rows if r["path"] in embedded}
    candidates = [t for t in sorted(by_type) if t not in seen_by_default_model and _unseen_material(by_type[t])]
    if len(candidates) < n_unseen:
        raise BedError(f"only {len(candidates)} noise types can be unseen, {n_unseen} asked")
    # Round-robin over the families (city, env, ...) so that the unseen types are not all one game's.
    families: dict[str, list[str]] = defaultdict(list)
    for t in shuffled(candidates, rng):
        families[t.split(":")[0]].append(t)
    unseen: list[str] = []
    while len(unseen) < n_unseen:
        for family in sorted(families):
            if families[family] and len(unseen) < n_unseen:
                unseen.append(families[family].pop(0))
    unseen.sort()
    prior, train, test = [], [], []
    for t in sorted(by_type):
        files = shuffled(sorted(by_type[t], key=lambda r: r["path"]), rng)
        if t in unseen:
            test.append(files[0])
            train += files[1:] or files[:1]
        elif len(files) == 1:
            prior.append(files[0])
        else:
            half = -(-len(files) // 2)
            prior += files[:half]
            data = files[half:]
            # A type with one data file shares it between training and test (other crops).
            test.append(data[0])
            train += data[1:] or data[:1]
    return {"prior": prior, "train": train, "test": test, "unseen": unseen, "excluded": excluded,
            "seen_by_default_model": sorted(seen_by_default_model)}


def _unseen_material(files: list[dict]) -> bool:
    """Enough of a type to hold it out of the noise prior: two files of 3 s or more (one for the
    test set), or one long recording (train and test then take other crops of it); shorter
    clips would be tiled into periodic artefacts."""
    durations = sorted((float(r["duration_s"]) for r in files), reverse=True)
    return (len(durations) >= 2 and durations[1] >= UNSEEN_MIN_SECONDS) or durations[0] >= UNSEEN_LONG_SECONDS


# --------------------------------------------------------------------------------------------
# Audio


def fade(x: np.ndarray) -> np.ndarray:
    n = min(round(FADE_SECONDS * SR), len(x) // 2)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(n) / n)
    x = x.copy()
    x[:n] *= ramp
    x[len(x) - n:] *= ramp[::-1]
    return x


def noise_segment(noise: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """(n samples of `noise` from a random offset, the offset); a file shorter than n + 1 s is
    tiled with raised-cosine crossfades, so the loop does not click."""
    if len(noise) < n + SR:
        cross = round(FADE_SECONDS * SR)
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(cross) / cross)
        loop = noise.copy()
        while len(loop) < n + len(noise):
            head = loop[-cross:] * ramp[::-1] + noise[:cross] * ramp
            loop = np.concatenate([loop[:-cross], head, noise[cross:]])
        noise = loop
    start = int(rng.integers(0, len(noise) - n + 1))
    return noise[start:start + n], start


def to_pcm(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * FULL_SCALE), -FULL_SCALE, FULL_SCALE - 1).astype(np.int16)


def write_pcm(path: Path, x: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, SR, subtype="PCM_16", format="WAV")


def mix(speech: np.ndarray, noise: np.ndarray, snr_db: float, level_dbfs: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(speech, noise) as 16-bit samples: the speech at `level_dbfs` P.56 active level, the noise at
    `snr_db` below it (its mean power over the file), both scaled down together when the mixture
    would peak above PEAK. Returns the gain of that scaling too (1: none)."""
    level = active_level_db(speech, SR)
    speech = speech * 10 ** ((level_dbfs - level) / 20)
    power = 10 ** ((level_dbfs - snr_db) / 10)
    noise = noise * np.sqrt(power / max(np.mean(noise**2), 1e-20))
    gain = min(1.0, PEAK / np.abs(speech + noise).max())
    return to_pcm(speech * gain), to_pcm(noise * gain), gain


# --------------------------------------------------------------------------------------------
# A bed


def build_bed(name: str, spec: BedSpec, corpus: Path, out: Path, seed: int, sizes: dict) -> dict:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    rows = read_manifest(corpus)
    speech = defaultdict(list)
    for r in rows:
        if r["kind"] == "speech":
            speech[voice_of(r)].append(r)
    for voice in (spec.test_voice, *spec.prior_voices):
        if voice not in speech:
            raise BedError(f"{corpus / 'MANIFEST.csv'}: no speech of voice {voice}")
    if spec.test_voice in spec.prior_voices:
        raise BedError(f"bed {name}: the test voice {spec.test_voice} is in its prior")

    lo, hi = sizes["utterance_seconds"]
    pool = shuffled(sorted((r for r in speech[spec.test_voice] if lo <= float(r["duration_s"]) <= hi), key=lambda r: r["path"]), rng)
    if len(pool) < sizes["train"] + sizes["test"]:
        raise BedError(f"{spec.test_voice} has {len(pool)} utterances of {lo:g}-{hi:g} s; "
                       f"{sizes['train']} + {sizes['test']} asked")
    train_utts, test_utts = pool[:sizes["train"]], pool[sizes["train"]:sizes["train"] + sizes["test"]]

    noise = split_noise([r for r in rows if r["kind"] == "noise"], rng, sizes["unseen_types"])
    recipe = {
        "bed": name, "description": spec.description, "seed": seed, "sample_rate": SR,
        "script": {"path": "scripts/build_beds.py", "version": SCRIPT_VERSION, "sha256": _sha256(Path(__file__)),
                   "git_commit": _git_commit()},
        "corpus": {"manifest_sha256": _sha256(corpus / "MANIFEST.csv")},
        "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
        "folders": FOLDERS,
        "speakers": {
            "test": [spec.test_voice], "noisy_train": [spec.test_voice], "prior": list(spec.prior_voices),
            "sex": {v: VOICES.get(v, "?") for v in (spec.test_voice, *spec.prior_voices)},
            "left_out_of_priors": LEFT_OUT_VOICES,
        },
        "snr": {"definition": "ITU-T P.56 active speech level (usedddp.audit.active_level_db) over the noise's mean power",
                "train_db": f"uniform {TRAIN_SNR_DB[0]:g}-{TRAIN_SNR_DB[1]:g} dB in 0.5 dB steps",
                "test_db": f"{', '.join(f'{s:g}' for s in TEST_SNRS_DB)} dB cycled over the shuffled test files",
                "speech_level_dbfs": list(SPEECH_LEVEL_DBFS), "peak": PEAK},
        "unseen_noise_types": noise["unseen"],
        "noise": {
            "type": "MANIFEST category without its variant number",
            "unseen_share_of_noisy_files": 0.5,
            "seen_by_default_model": noise["seen_by_default_model"],
            "excluded": noise["excluded"],
        },
    }

    # The clean prior: other voices' utterances, unchanged.
    prior_files = []
    for voice in spec.prior_voices:
        utts = shuffled(sorted((r for r in speech[voice] if PRIOR_SECONDS[0] <= float(r["duration_s"]) <= PRIOR_SECONDS[1]),
                               key=lambda r: r["path"]), rng)[:sizes["prior_per_voice"]]
        for r in utts:
            rel = f"{FOLDERS['prior_clean']}/{voice}/{Path(r['path']).stem}.wav"
            write_pcm(out / rel, to_pcm(read_audio(corpus, r["path"])))
            prior_files.append({"file": rel, "speaker": voice, "source": source(r)})

    # The noise prior: seen types only, long loops cropped.
    noise_files = []
    for r in noise["prior"]:
        x = read_audio(corpus, r["path"])
        offset = 0
        if len(x) > MAX_NOISE_PRIOR_SECONDS * SR:
            n = round(MAX_NOISE_PRIOR_SECONDS * SR)
            offset = int(rng.integers(0, len(x) - n + 1))
            x = fade(x[offset:offset + n])
        rel = f"{FOLDERS['prior_noise']}/{Path(r['path']).parent.name}/{Path(r['path']).stem}.wav"
        write_pcm(out / rel, to_pcm(x))
        noise_files.append({"file": rel, "type": noise_type(r), "offset_s": round(offset / SR, 4),
                            "seconds": round(len(x) / SR, 3), "source": source(r)})

    # The noisy sets: every other file (of the shuffled order) in unseen-type noise, so that the
    # unseen types make half of what stage 3 hears; each pool cycles through its files.
    unseen = set(noise["unseen"])
    noisy = {}
    cache: dict[str, np.ndarray] = {}
    for split, utts in (("train", train_utts), ("test", test_utts)):
        pools = {kind: shuffled([r for r in noise[split] if (noise_type(r) in unseen) == (kind == "unseen")], rng)
                 for kind in ("unseen", "seen")}
        if not pools["unseen"] or not pools["seen"]:
            raise BedError(f"bed {name}: no {'unseen' if not pools['unseen'] else 'seen'}-type noise for the {split} set")
        snrs = [TEST_SNRS_DB[i % len(TEST_SNRS_DB)] for i in rng.permutation(len(utts))] if split == "test" else None
        records = []
        for i, r in enumerate(utts):
            kind = "unseen" if i % 2 == 0 else "seen"
            n_row = pools[kind][(i // 2) % len(pools[kind])]
            if n_row["path"] not in cache:
                cache[n_row["path"]] = read_audio(corpus, n_row["path"])
            s = read_audio(corpus, r["path"])
            n, offset = noise_segment(cache[n_row["path"]], len(s), rng)
            snr = snrs[i] if snrs else float(rng.integers(2 * TRAIN_SNR_DB[0], 2 * TRAIN_SNR_DB[1] + 1)) / 2
            level = round(float(rng.uniform(*SPEECH_LEVEL_DBFS)), 2)
            clean, part, gain = mix(s, n, snr, level)
            file = f"{spec.test_voice}__{Path(r['path']).stem}.wav"
            folder = FOLDERS["noisy_train" if split == "train" else "noisy_test"]
            write_pcm(out / folder / file, (clean.astype(np.int32) + part).astype(np.int16))
            write_pcm(out / FOLDERS["truth_clean"] / file, clean)
            write_pcm(out / FOLDERS["truth_noise"] / file, part)
            if split == "test":
                write_pcm(out / FOLDERS["clean_test"] / file, clean)
            records.append({"file": file, "speaker": spec.test_voice, "speech": source(r), "noise": source(n_row),
                            "noise_type": noise_type(n_row), "noise_seen": kind == "seen",
                            "noise_offset_s": round(offset / SR, 4), "snr_db": snr, "speech_level_dbfs": level,
                            "gain": round(gain, 6), "seconds": round(len(s) / SR, 3)})
        noisy[split] = records

    with (out / "testset_conditions.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=("file", "speaker", "noise_file", "noise_type", "noise", "snr_db"))
        w.writeheader()
        for rec in noisy["test"]:
            w.writerow({"file": rec["file"], "speaker": rec["speaker"], "noise_file": rec["noise"]["path"],
                        "noise_type": rec["noise_type"], "noise": "seen" if rec["noise_seen"] else "unseen",
                        "snr_db": f"{rec['snr_db']:g}"})
    recipe["files"] = {"prior_clean": prior_files, "prior_noise": noise_files, "noisy_train": noisy["train"],
                       "noisy_test": noisy["test"]}
    recipe["noise"]["seen_noise_types"] = sorted({f["type"] for f in noise_files})
    recipe["noise"]["noisy_data_noise_types"] = sorted({r["noise_type"] for r in noisy["train"] + noisy["test"]})
    recipe["licences"] = sorted({(s["package"], s["version"], s["license"]) for s in _sources(recipe)})
    (out / "recipe.json").write_text(json.dumps(recipe, indent=1) + "\n")
    (out / "README.md").write_text(_readme(recipe))
    return recipe


def _sources(recipe: dict):
    files = recipe["files"]
    yield from (f["source"] for f in files["prior_clean"] + files["prior_noise"])
    for rec in files["noisy_train"] + files["noisy_test"]:
        yield rec["speech"]
        yield rec["noise"]


def _readme(recipe: dict) -> str:
    files = recipe["files"]
    sp = recipe["speakers"]
    unseen = sum(not r["noise_seen"] for r in files["noisy_train"])
    licences = "\n".join(f"| {p} | {v} | {lic} |" for p, v, lic in recipe["licences"])
    return f"""# Development bed `{recipe['bed']}` ({recipe['description']})

Built by `scripts/build_beds.py --seed {recipe['seed']}` (version {recipe['script']['version']}, commit
{recipe['script']['git_commit']}) from the demo source corpus; `recipe.json` lists every file's sources,
noise type, SNR and gain.

    python -m usedddp.train experiment=vctk_unsup data.root=BED prior=folder prior.dir=BED/prior_clean \\
        noise=folder noise.dir=BED/prior_noise model=tiny_stft trainer=default

| folder | what |
|---|---|
| noisy_trainset_28spk_wav | {len(files['noisy_train'])} utterances of {sp['test'][0]} ({sp['sex'][sp['test'][0]]}) in noise, SNR {recipe['snr']['train_db']}; {unseen} in unseen-type noise |
| noisy_testset_wav, clean_testset_wav | {len(files['noisy_test'])} pairs: other utterances of the same voice, SNR {recipe['snr']['test_db']} |
| prior_clean | {len(files['prior_clean'])} utterances of {', '.join(f"{v} ({sp['sex'][v]})" for v in sp['prior'])} |
| prior_noise | {len(files['prior_noise'])} files of the seen noise types |
| _truth/clean, _truth/noise | the speech and noise parts of every noisy file (noisy = clean + noise in 16-bit samples): not for training |

Unseen noise types (in the noisy data, never in prior_noise, nor in the embedded demo noise prior):
{', '.join(recipe['unseen_noise_types'])}.

## Licences

The audio is real speech and field recordings from Debian packages; **it keeps its licences, whatever
the licence of the code**, and a mixture carries the licences of all its sources:

| package | version | licence |
|---|---|---|
{licences}
"""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


# --------------------------------------------------------------------------------------------
# Command


def build(corpus: Path, out: Path, beds: list[str], seed: int, sizes: dict, overwrite: bool = False) -> dict[str, dict]:
    """Build each bed into out/NAME (refusing a non-empty one unless `overwrite`): into a hidden
    sibling first, renamed when complete, so an interrupted build leaves no half bed."""
    unknown = [b for b in beds if b not in BEDS]
    if unknown:
        raise BedError(f"unknown bed(s) {unknown}; choose from {sorted(BEDS)}")
    read_manifest(corpus)  # fails before anything is written
    recipes = {}
    for name in beds:
        target = out / name
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            if not overwrite:
                raise BedError(f"{target} exists and is not empty: choose another --out or pass --overwrite")
        partial = out / f".{name}.partial"
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        recipes[name] = build_bed(name, BEDS[name], corpus, partial, seed, sizes)
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        partial.rename(target)
    return recipes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True, help="the demo source corpus (holding MANIFEST.csv)")
    ap.add_argument("--out", type=Path, required=True, help="folder that receives one sub-folder per bed")
    ap.add_argument("--bed", action="append", choices=sorted(BEDS), help="bed(s) to build (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=80, help="noisy training files per bed")
    ap.add_argument("--test", type=int, default=24, help="test pairs per bed")
    ap.add_argument("--prior-per-voice", type=int, default=30, help="clean-prior utterances per prior voice")
    ap.add_argument("--unseen-types", type=int, default=4, help="noise types kept out of the noise prior")
    ap.add_argument("--utterance-seconds", type=float, nargs=2, default=(1.5, 5.0), metavar=("MIN", "MAX"),
                    help="durations of the test voice's utterances used for the noisy sets")
    ap.add_argument("--overwrite", action="store_true", help="replace existing non-empty beds")
    args = ap.parse_args(argv)
    sizes = {"train": args.train, "test": args.test, "prior_per_voice": args.prior_per_voice,
             "unseen_types": args.unseen_types, "utterance_seconds": tuple(args.utterance_seconds)}
    try:
        recipes = build(args.corpus, args.out, args.bed or sorted(BEDS), args.seed, sizes, args.overwrite)
    except BedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, recipe in recipes.items():
        files = recipe["files"]
        print(f"{args.out / name}: {len(files['noisy_train'])} noisy training files, {len(files['noisy_test'])} test pairs, "
              f"{len(files['prior_clean'])} clean-prior files, {len(files['prior_noise'])} noise-prior files; "
              f"unseen noise types: {', '.join(recipe['unseen_noise_types'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
