"""Training-free reference points for a comparison: classical spectral gating, and the oracle
Wiener filter that needs the clean reference.

- `NoiseReduceEnhancer`: the `noisereduce` package's spectral gating (Sainburg, Thielk, Gentner,
  "Finding, visualizing, and quantifying latent structure across diverse animal vocal
  repertoires", PLoS Computational Biology 2020), an Enhancer like any trained method's, so
  usedddp.enhance.enhance_paths runs it.
- `oracle_wiener`: the Wiener filter whose speech and noise variances are the true ones, |S|^2
  and |X - S|^2, read off the clean reference. Not a method (it needs the answer); an upper bound
  of what a per-bin real gain can do, labelled ORACLE_WIENER_LABEL wherever it appears.
"""

from __future__ import annotations

import logging
import time
from importlib import metadata
from pathlib import Path

import noisereduce
import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from usedddp.audio import AudioFileError, load_audio, save_audio
from usedddp.enhance import EnhanceReport
from usedddp.methods.wiener import wiener_estimate

log = logging.getLogger("usedddp.compare")

NOISEREDUCE_LABEL = "noisereduce"
ORACLE_WIENER_LABEL = "oracle Wiener (uses the clean reference; upper bound)"
SAMPLE_RATE = 16000


class NoiseReduceEnhancer:
    """noisereduce.reduce_noise as an Enhancer: (1, 1, t) noisy -> {"clean", "noise" = input - clean}.

    Non-stationary gating (stationary=False), the package's default: the noise floor is a running
    estimate per frequency (time constant 2 s) rather than one spectrum for the whole file, which
    suits backgrounds that change within an utterance (street, cafe, babble). Deterministic (no
    random draws); no network, so nfe stays 0. `options` go to noisereduce.reduce_noise."""

    sample_rate = SAMPLE_RATE
    hop_length = 1  # any chunk boundary will do

    def __init__(self, stationary: bool = False, **options):
        self.stationary, self.options, self.nfe = bool(stationary), dict(options), 0

    def __call__(self, x: Tensor, streams: tuple[str, ...] = ("clean", "noise")) -> dict[str, Tensor | None]:
        wav = x.detach().to("cpu", torch.float64).reshape(-1).numpy()
        clean = noisereduce.reduce_noise(y=wav, sr=self.sample_rate, stationary=self.stationary, n_jobs=1, use_tqdm=False,
                                         **self.options)
        clean = np.asarray(clean, dtype=np.float64).reshape(-1)
        if clean.shape[0] != wav.shape[0]:  # the package keeps the length; guard the contract anyway
            clean = np.pad(clean[:wav.shape[0]], (0, max(0, wav.shape[0] - clean.shape[0])))
        clean_t = torch.from_numpy(clean).to(torch.float32).reshape(1, 1, -1)
        noise = x.detach().cpu().float().reshape(1, 1, -1) - clean_t if "noise" in streams else None
        return {"clean": clean_t, "noise": noise}

    @property
    def settings(self) -> dict:
        """What the outputs depend on (recorded in a comparison's manifest)."""
        return {"stationary": self.stationary, **self.options, "noisereduce": metadata.version("noisereduce")}


def oracle_wiener(noisy: Tensor, clean: Tensor, n_fft: int = 1024, hop: int = 256) -> tuple[Tensor, Tensor]:
    """(speech, noise) waveforms like `noisy` (any shape (..., T)): the Wiener estimate with the
    oracle variances |S|^2 and |X - S|^2 of the clean reference S and the noisy STFT X.

    STFT with a periodic Hann window of n_fft samples, hop n_fft / 4 by default (the squared-Hann
    overlap-add is constant there, so the iSTFT inverts it), centred frames. speech + noise ==
    noisy up to the iSTFT's float rounding (methods.wiener.wiener_estimate splits every bin
    exactly)."""
    noisy, clean = torch.as_tensor(noisy), torch.as_tensor(clean)
    if noisy.shape != clean.shape:
        raise ValueError(f"noisy {tuple(noisy.shape)} and clean {tuple(clean.shape)} must have the same shape")
    shape, length = noisy.shape, noisy.shape[-1]
    if length < n_fft // 2 + 1:
        raise ValueError(f"{length} samples: shorter than half an STFT frame ({n_fft // 2 + 1} samples)")
    dtype = noisy.dtype if noisy.is_floating_point() else torch.float32
    x, s = noisy.to(dtype).reshape(-1, length), clean.to(dtype).reshape(-1, length)
    window = torch.hann_window(n_fft, periodic=True, dtype=dtype, device=x.device)

    def stft(w: Tensor) -> Tensor:
        return torch.stft(w, n_fft, hop, window=window, center=True, return_complex=True)

    X, S = stft(x), stft(s)
    speech, noise = wiener_estimate(X, S.abs().square(), (X - S).abs().square())

    def istft(spec: Tensor) -> Tensor:
        return torch.istft(spec, n_fft, hop, window=window, center=True, length=length).reshape(shape)

    return istft(speech), istft(noise)


def oracle_wiener_paths(pairs: dict[str, tuple[Path, Path]], noisy_root: Path, output: Path, *, n_fft: int = 1024,
                        hop: int = 256, overwrite: bool = False, progress: bool = True) -> EnhanceReport:
    """Apply `oracle_wiener` to every {key: (noisy file, clean file)} pair, writing the speech
    estimate at 16 kHz to the noisy file's relative path under `output`; returns an
    usedddp.enhance.EnhanceReport (a file's problem is recorded and the others go on)."""
    report = EnhanceReport(total=len(pairs))
    with logging_redirect_tqdm():
        for key in tqdm(sorted(pairs), desc="oracle Wiener", unit="file", dynamic_ncols=True, disable=not progress):
            noisy_path, clean_path = pairs[key]
            target = output / noisy_path.relative_to(noisy_root)
            started = time.perf_counter()
            try:
                x = load_audio(noisy_path, SAMPLE_RATE)
                s = load_audio(clean_path, SAMPLE_RATE)
                if s.shape[-1] < x.shape[-1]:  # pairs are cut to the shorter length when scored anyway
                    s = torch.nn.functional.pad(s, (0, x.shape[-1] - s.shape[-1]))
                speech, _ = oracle_wiener(x, s[..., :x.shape[-1]], n_fft, hop)
                save_audio(target, speech, SAMPLE_RATE, overwrite=overwrite)
            except Exception as error:  # one pair's problem: reported, the others go on
                reason = str(error.problem) if isinstance(error, AudioFileError) and error.problem else str(error)
                report.failed.append((noisy_path, reason))
                log.error("FAILED %s: %s", noisy_path, reason)
                continue
            report.written.append((noisy_path, [target]))
            report.seconds += time.perf_counter() - started
            report.audio_seconds += x.shape[-1] / SAMPLE_RATE
    return report
