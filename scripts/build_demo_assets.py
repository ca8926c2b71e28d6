#!/usr/bin/env python
"""Build the small demo corpus shipped in src/usedddp/assets/demo from the demo source corpus.

    python scripts/build_demo_assets.py --source /work/shared/demo-corpus --force

Selection is deterministic (sorted file lists, numpy Generator seeded with --seed). Speakers
and noise files are split so that nothing leaks between the priors and the noisy sets:
- clean_prior/<speaker>/     the wideband clean prior: utterances of the one non-test speaker whose
  recordings are wideband and not gated (tuxpaint_es_Estefania_Ortiz), copied unchanged
- clean_prior_bandlimited/<speaker>/   the first clean prior (three speakers, two of them band-limited
  and gated: `python -m usedddp.audit prior=demo_bandlimited` warns), kept for the prior ablation
- noise_prior/<package>/     a varied set of noise files (long loops cropped to 10 s)
- noisy_trainset/            simulated 'real' noisy recordings (three other speakers, other noise files)
- noisy_testset/, clean_testset/, testset_conditions.csv   held-out utterances and noise files
- clean_prior_matched/<speaker>/   other utterances of the three noisy/test speakers (an in-domain
  clean prior for the prior-corpus ablation), none of them a source of any mixture above
Needs only numpy and soundfile. The matched and the wideband priors are drawn last, each from its
own Generator, so adding them left every other file byte-identical.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000
# The first clean prior, now clean_prior_bandlimited: the two fillets voices have almost nothing
# above 6 kHz (their 6-8 kHz band sits 66-70 dB below the spectrum's peak, median over files) and
# digital silence between words; tuxpaint_es sits at 42 dB, the test speakers at 38-45 dB.
PRIOR_SPEAKERS = ("fillets_nl_small_fish_F", "fillets_nl_big_fish_M", "tuxpaint_es_Estefania_Ortiz")
# The wideband clean prior: of the speakers that are not the noisy/test speakers, the only one
# whose recordings are wideband with a room-noise floor like the test speakers' own.
WIDEBAND_PRIOR_SPEAKERS = ("tuxpaint_es_Estefania_Ortiz",)
NOISY_SPEAKERS = ("tuxpaint_ro_Tabbytha", "tuxpaint_el_Kiriaki_Serafeim", "tuxpaint_ru_Edwin_Veber")
SNRS_DB = (0, 5, 10, 15)
CLEAN_PRIOR_SECONDS = 150.0
# The in-domain prior: about 30 s per test speaker (kept small: about 1.6 MB). Smaller than
# clean_prior, so an ablation compares corpora that differ in size too; the README says so.
MATCHED_PRIOR_SECONDS = 90.0
MIN_PRIOR_UTTERANCE_SECONDS = 1.0
NOISE_PRIOR_SECONDS = 90.0
MAX_NOISE_SECONDS = 10.0
MAX_PRIOR_UTTERANCE_SECONDS = 8.0  # so that no single long utterance dominates the prior
MIN_NOISE_SECONDS = 1.0  # shorter clips (clicks, single barks) would be tiled into periodic artefacts
NUM_TRAIN, NUM_TEST = 48, 16
PEAK = 0.95
FADE_SECONDS = 0.02  # on cropped loops, so tiling them does not click
MANIFEST_FIELDS = ("path", "kind", "duration_s", "derived_from", "source_package", "package_version", "license",
                   "speaker", "snr_db")


def read(path: Path) -> np.ndarray:
    x, sr = sf.read(path, dtype="float64")
    assert sr == SR and x.ndim == 1, f"{path}: expected 16 kHz mono"
    return x


def write(path: Path, x: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, SR, format="FLAC", subtype="PCM_16")


def shuffled(items, rng: np.random.Generator) -> list:
    items = sorted(items, key=lambda r: r["path"])
    return [items[i] for i in rng.permutation(len(items))]


def joined(rows: list[dict], key: str) -> str:
    return ";".join(dict.fromkeys(r[key] for r in rows))  # ordered, without repeats


def manifest_row(path: str, kind: str, seconds: float, sources: list[dict], speaker: str = "", snr="") -> dict:
    return {"path": path, "kind": kind, "duration_s": f"{seconds:.3f}", "derived_from": joined(sources, "path"),
            "source_package": joined(sources, "source_package"), "package_version": joined(sources, "package_version"),
            "license": joined(sources, "license"), "speaker": speaker, "snr_db": snr}


def speaker_of(row: dict) -> str:
    return Path(row["path"]).parent.name  # folder name, e.g. fillets_nl_small_fish_F


def split_noise(noise: list[dict], rng: np.random.Generator) -> tuple[list[dict], list[dict], list[dict]]:
    """(prior, train-mixing, test-mixing) noise rows, pairwise disjoint.

    Near-identical recordings shipped twice under different names (same package, category
    and duration) are treated as one unit so they cannot end up on both sides of a split."""
    units: dict[tuple, dict] = {}
    for r in sorted(noise, key=lambda r: r["path"]):
        if float(r["duration_s"]) >= MIN_NOISE_SECONDS:
            units.setdefault((r["source_package"], r["category"], r["duration_s"]), r)
    by_family = defaultdict(list)  # ambience, city, animal, effects, env, human
    for r in units.values():
        by_family[r["category"].split(":")[0]].append(r)
    queues = {f: shuffled(rows, rng) for f, rows in sorted(by_family.items())}
    prior, total = [], 0.0
    while total < NOISE_PRIOR_SECONDS and any(queues.values()):  # round-robin over families for variety
        for f in sorted(queues):
            if queues[f] and total < NOISE_PRIOR_SECONDS:
                r = queues[f].pop(0)
                prior.append(r)
                total += min(float(r["duration_s"]), MAX_NOISE_SECONDS)
    rest = shuffled([r for q in queues.values() for r in q], rng)
    return prior, rest[len(rest) // 4:], rest[: len(rest) // 4]


def mix(speech: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator):
    """Noise crop (tiled if short) scaled to `snr_db`; both scaled down together if the mix peaks above PEAK."""
    n = len(speech)
    if len(noise) < n:
        noise = np.tile(noise, -(-n // len(noise)) + 1)
    start = rng.integers(0, len(noise) - n + 1)
    noise = noise[start:start + n]
    noise = noise * np.sqrt(np.mean(speech ** 2) / (np.mean(noise ** 2) * 10 ** (snr_db / 10)))
    noisy = speech + noise
    gain = min(1.0, PEAK / max(np.abs(noisy).max(), np.abs(speech).max()))
    return noisy * gain, speech * gain


def copy_prior(source: Path, out: Path, kind: str, pools: dict[str, list[dict]], seconds: float,
               rng: np.random.Generator, manifest: list[dict]) -> None:
    """Copy shuffled utterances of each speaker's pool into out/kind/<speaker>/ until the speaker
    has seconds / len(pools) of them; one manifest row each."""
    for spk, pool in pools.items():
        total = 0.0
        for r in shuffled(pool, rng):
            if total >= seconds / len(pools):
                break
            dst = out / kind / spk / Path(r["path"]).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / r["path"], dst)
            total += float(r["duration_s"])
            manifest.append(manifest_row(dst.relative_to(out).as_posix(), kind, float(r["duration_s"]), [r], spk))


def build(source: Path, out: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = list(csv.DictReader(open(source / "MANIFEST.csv", newline="")))
    speech = defaultdict(list)
    for r in rows:
        if r["kind"] == "speech":
            speech[speaker_of(r)].append(r)
    manifest = []

    copy_prior(source, out, "clean_prior_bandlimited", {spk: [r for r in speech[spk] if float(r["duration_s"]) <= MAX_PRIOR_UTTERANCE_SECONDS]
                                                      for spk in PRIOR_SPEAKERS}, CLEAN_PRIOR_SECONDS, rng, manifest)

    prior_noise, train_noise, test_noise = split_noise([r for r in rows if r["kind"] == "noise"], rng)
    fade = np.linspace(0.0, 1.0, round(FADE_SECONDS * SR))
    for r in prior_noise:
        dst = out / "noise_prior" / Path(r["path"]).parent.name / Path(r["path"]).name
        x = read(source / r["path"])
        if len(x) > MAX_NOISE_SECONDS * SR:
            start = rng.integers(0, len(x) - int(MAX_NOISE_SECONDS * SR) + 1)
            x = x[start:start + int(MAX_NOISE_SECONDS * SR)].copy()
            x[: len(fade)] *= fade
            x[-len(fade):] *= fade[::-1]
            write(dst, x)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / r["path"], dst)
        manifest.append(manifest_row(dst.relative_to(out).as_posix(), "noise_prior", len(x) / SR, [r]))

    # Utterances of 2-4 s from the three 'noisy' speakers: the first ones simulate the real noisy
    # training recordings, the next ones are the held-out test set.
    queues = {spk: shuffled([r for r in speech[spk] if 2.0 <= float(r["duration_s"]) <= 4.0], rng)
              for spk in NOISY_SPEAKERS}
    conditions = []
    for split, count, noises in (("train", NUM_TRAIN, train_noise), ("test", NUM_TEST, test_noise)):
        for i in range(count):
            spk = NOISY_SPEAKERS[i % len(NOISY_SPEAKERS)]
            s_row, n_row = queues[spk].pop(0), noises[i % len(noises)]
            snr = SNRS_DB[i % len(SNRS_DB)] if split == "test" else int(rng.choice(SNRS_DB))
            noisy, clean = mix(read(source / s_row["path"]), read(source / n_row["path"]), snr, rng)
            name = f"{spk.removeprefix('tuxpaint_')}__{Path(s_row['path']).name}"
            folder = "noisy_trainset" if split == "train" else "noisy_testset"
            write(out / folder / name, noisy)
            manifest.append(manifest_row(f"{folder}/{name}", f"noisy_{split}", len(noisy) / SR, [s_row, n_row],
                                         spk, str(snr)))
            if split == "test":
                write(out / "clean_testset" / name, clean)
                manifest.append(manifest_row(f"clean_testset/{name}", "clean_test", len(clean) / SR, [s_row], spk))
                conditions.append({"file": name, "speaker": spk, "noise_file": n_row["path"],
                                   "noise_category": n_row["category"], "snr_db": snr})

    # The in-domain clean prior: other utterances of the noisy/test speakers. Every source file of
    # every file above is excluded, and the draw uses its own Generator so that the files above do
    # not depend on it.
    used = {p for r in manifest for p in r["derived_from"].split(";")}
    usable = [r for rows_ in speech.values() for r in rows_
              if MIN_PRIOR_UTTERANCE_SECONDS <= float(r["duration_s"]) <= MAX_PRIOR_UTTERANCE_SECONDS]
    copy_prior(source, out, "clean_prior_matched", {spk: [r for r in usable if speaker_of(r) == spk and r["path"] not in used]
                                                  for spk in NOISY_SPEAKERS}, MATCHED_PRIOR_SECONDS,
               np.random.default_rng([seed, 1]), manifest)
    # The wideband clean prior (prior=demo): as much as the first prior held, from its own Generator.
    copy_prior(source, out, "clean_prior", {spk: [r for r in usable if speaker_of(r) == spk] for spk in WIDEBAND_PRIOR_SPEAKERS},
               CLEAN_PRIOR_SECONDS, np.random.default_rng([seed, 2]), manifest)

    with open(out / "testset_conditions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=("file", "speaker", "noise_file", "noise_category", "snr_db"))
        w.writeheader()
        w.writerows(conditions)
    with open(out / "MANIFEST.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        w.writeheader()
        w.writerows(sorted(manifest, key=lambda r: r["path"]))
    (out / "README.md").write_text(readme(manifest, seed))


def readme(manifest: list[dict], seed: int) -> str:
    kinds = defaultdict(lambda: [0, 0.0])
    for r in manifest:
        kinds[r["kind"]][0] += 1
        kinds[r["kind"]][1] += float(r["duration_s"])
    packages = sorted({(p, v, lic) for r in manifest for p, v, lic in
                       zip(r["source_package"].split(";"), r["package_version"].split(";"), r["license"].split(";"))})
    table = "\n".join(f"| {k} | {n} | {s:.1f} |" for k, (n, s) in sorted(kinds.items()))
    pk = "\n".join(f"| {p} | {v} | {lic} |" for p, v, lic in packages)
    return f"""# USE-DDP demo corpus

A tiny corpus (16 kHz mono, 16-bit FLAC) for trying the package end to end. It is far too small
to train a useful model.

| folder | role |
|---|---|
| `clean_prior/<speaker>/` | clean-speech prior (`prior=demo`): utterances of {", ".join(WIDEBAND_PRIOR_SPEAKERS)}, the one speaker of the source corpus who is not a test speaker and whose recordings are wideband with a room-noise floor (copied unchanged) |
| `clean_prior_bandlimited/<speaker>/` | the first clean prior (`prior=demo_bandlimited`): utterances of {", ".join(PRIOR_SPEAKERS)} (copied unchanged); the two fillets voices are band-limited (6-8 kHz about 66-70 dB below the spectral peak) with digital silence between words, and the prior audit warns about it: kept to show that the prior is the result |
| `noise_prior/<package>/` | noise prior: a varied set of environmental recordings, long loops cropped to {MAX_NOISE_SECONDS:.0f} s with {FADE_SECONDS * 1000:.0f} ms fades |
| `noisy_trainset/` | stand-in for real noisy recordings: utterances of {", ".join(NOISY_SPEAKERS)} mixed with noise files that are not in `noise_prior` at SNRs drawn from {{0, 5, 10, 15}} dB; their clean parts are not shipped |
| `noisy_testset/`, `clean_testset/` | held-out pairs (same file names): other utterances of the same three speakers, other noise files, SNRs 0/5/10/15 dB cycled; `testset_conditions.csv` lists speaker, noise file, noise category and SNR per file |
| `clean_prior_matched/<speaker>/` | an **in-domain** clean-speech prior for the prior-corpus ablation (`prior=demo_matched`): about {MATCHED_PRIOR_SECONDS / len(NOISY_SPEAKERS):.0f} s each of other utterances of {", ".join(NOISY_SPEAKERS)}, the speakers of the noisy sets (copied unchanged; no file is a source of any mixture or reference) |

Each mixture (and its clean reference) is scaled down together when needed so that its peak is at most {PEAK}.
`MANIFEST.csv` lists every file with its duration, the source files it was derived from, their
source packages, versions and licences, the speaker and the SNR.

| kind | files | seconds |
|---|---|---|
{table}

## Sources and licences

All audio is real recorded speech or real field recordings taken from Debian packages
(via the project's demo source corpus: downmixed to mono, resampled to 16 kHz):

| source package | version | licence |
|---|---|---|
{pk}

The speech (fillets-ng-data-nl: Dutch voice actors; tuxpaint-stamps-default: volunteer readers
Estefania Ortiz, Tabbytha, Kiriaki Serafeim, Edwin Veber) is GPL-2; the lincity-ng and wesnoth
noise is GPL-2+; the megaglest, scratch (MIT Media Lab) and minetest noise is CC-BY-SA-3.0 (see
each package's copyright file). The exact licence of every file, and of every source of a
mixture, is in `MANIFEST.csv`. **These audio files are distributed under those licences, whatever
the licence of the code of this project**; mixtures carry the licences of all their sources.

## How it was built

`python scripts/build_demo_assets.py --seed {seed}` (deterministic: sorted file lists shuffled by
a numpy Generator seeded with {seed}).
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=Path("/work/shared/demo-corpus"))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src/usedddp/assets/demo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="delete and rebuild an existing output folder")
    args = ap.parse_args()
    if args.out.exists():
        if not args.force:
            raise SystemExit(f"{args.out} exists; pass --force to rebuild it")
        shutil.rmtree(args.out)
    build(args.source, args.out, args.seed)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
