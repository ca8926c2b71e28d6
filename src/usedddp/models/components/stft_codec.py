"""A fixed-transform codec: STFT analysis in, a bounded mask on the input spectrum out.

It stands where DAC's encoder and decoder stand (the codec contract of codec.Codec), so the two RoFormer
branches, their RVQ, the least-squares mixture and the three discriminator ensembles are
unchanged. Only two thin linear maps learn here; the time-frequency transform itself is fixed
and exactly invertible, so a from-scratch model spends its few CPU minutes on *separating*,
not on learning to synthesise a waveform (which DAC's decoder must first learn from nothing).

Analysis (encode), per frame n and bin f of X = STFT(x) (Hann window, hop n_fft/4):

    features = [ |X|^c , Re(X) |X|^(c-1) , Im(X) |X|^(c-1) ]      (c = 0.3: power-law
    compression, as in compressed-spectrum enhancement losses; it evens out the 60+ dB range
    of speech spectra without the log's blow-up at silent bins)
    z = W_in · features + b_in                                      (B, latent_dim, N)

Synthesis (decode) of a branch's latent z, given the input waveform x as `reference`: two
parameters per bin and frame, p = W_out · z + b_out (B, F, N, 2), become a mask M, and

    y = ISTFT(M ⊙ X)                                                (B, 1, T), length T exactly

with M one of
- mask='gate' (the default): a real gain M = bound · sigmoid(p0 + p1 · L), L = log10|X|² less
  the item's mean (level-independent). The latent sets, per bin and frame, an intercept and a
  slope against the bin's own level: a learned spectral gate, Wiener-like (a gain that grows with
  the bin's level over a floor). The dependence of a bin's gain on its own level is built in
  rather than learned per bin through the frame-wide linear map.
- mask='complex': M = bound · tanh(|m|) · m/|m|, m = p0 + i p1 (DCCRN-E, Hu et al. 2020): a
  bounded complex ratio mask that can also turn the phase.
In short generator-only runs on the demo corpus the two reached the same held-out SI-SDR within
run-to-run noise; the gate is the default for its built-in level dependence and because gains
in [0, 1] cannot cancel each other (below).

Why a bounded mask on the input spectrum (not a predicted spectrum): every output is a
time-varying filter of the input, so from the first step both streams are speech-and-noise
shaped and in range; the bound keeps each output below `bound` times the input in every bin (no
exploding levels, no saturation). With the bias at mask_init = 0.5 and small weights, both
streams start at x/2: clean + noise = x, the least-squares scales start at alpha = beta = 1 and
the reconstruction terms at zero, while the branches (zero-initialised output projections)
learn to move the two masks apart. Real gates M_clean + M_noise = 1 (and complex masks too)
split the input exactly, which is what the reconstruction x = alpha s + beta n asks for; gates
in [0, 1] cannot cancel each other, which keeps stage 3 from splitting x into two large,
opposite signals.

The STFT and ISTFT run in float32 with autocast off (like the discriminators): bf16 spectra
lose the low-level bins. Nothing is cached between calls: the mask is applied to the spectrum of
the `reference` waveform passed to `decode`, so the module is stateless (DDP/torch.compile safe).
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from usedddp.models.components.codec import Codec


class STFTCodec(Codec):
    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 512,
        hop_length: int = 128,
        latent_dim: int = 256,
        window: str = "hann",
        compression: float = 0.3,
        mask: str = "gate",
        mask_bound: float = 1.0,
        mask_init: float = 0.5,
        gate_level: str = "item_mean",
        gate_floor_quantile: float = 0.1,
        min_gain: float = 0.0,
    ):
        super().__init__(sample_rate, hop_length, latent_dim)
        if n_fft % hop_length or n_fft // hop_length < 2:
            raise ValueError(f"n_fft={n_fft} must be a multiple (>= 2) of hop_length={hop_length}")
        if not 0 < mask_init < mask_bound:
            raise ValueError(f"mask_init={mask_init} must lie in (0, mask_bound={mask_bound})")
        if mask not in ("complex", "gate"):
            raise ValueError(f"mask={mask!r}: use 'complex' or 'gate'")
        if gate_level not in ("item_mean", "bin_floor"):
            raise ValueError(f"gate_level={gate_level!r}: use 'item_mean' or 'bin_floor'")
        if not 0.0 <= gate_floor_quantile < 1.0:
            raise ValueError(f"gate_floor_quantile={gate_floor_quantile} must lie in [0, 1)")
        if not 0.0 <= min_gain < mask_init:
            raise ValueError(f"min_gain={min_gain} must lie in [0, mask_init={mask_init})")
        if min_gain and mask != "gate":
            raise ValueError(f"min_gain={min_gain} applies to mask='gate' only, not mask={mask!r}")
        self.gate_level, self.gate_floor_quantile = gate_level, float(gate_floor_quantile)
        self.min_gain = float(min_gain)
        self.mask_type = mask
        self.n_fft = n_fft
        self.compression, self.mask_bound = compression, mask_bound
        n_bins = n_fft // 2 + 1
        # The window is a buffer (follows .to(device)) but not saved: it is a function of the config.
        self.register_buffer("window", _window(window, n_fft), persistent=False)
        self.analysis = nn.Linear(3 * n_bins, latent_dim)
        self.synthesis = nn.Linear(latent_dim, 2 * n_bins)
        # Small weights and a bias at the initial mask: both streams start at mask_init * x
        # (real, i.e. phase 0), whatever the latent.
        nn.init.normal_(self.synthesis.weight, std=0.01 / math.sqrt(latent_dim))
        with torch.no_grad():
            bias = torch.zeros(2, n_bins)
            # complex: bound tanh(|m|) = mask_init at m = atanh(init / bound) + 0j; gate: the
            # intercept at logit(init / bound), the slope at 0.
            r = (mask_init - min_gain) / (mask_bound - min_gain)
            bias[0] = math.atanh(r) if mask == "complex" else math.log(r / (1 - r))
            self.synthesis.bias.copy_(bias.flatten())

    def n_frames(self, num_samples: int) -> int:
        # torch.stft with center=True: one frame per hop plus one.
        return num_samples // self.hop_length + 1

    def stft(self, wav: Tensor) -> Tensor:
        """wav (B, 1, T) -> complex spectrum (B, F, N), float32 whatever the autocast state."""
        with torch.autocast(wav.device.type, enabled=False):
            # Zero ('constant') padding at the edges, not reflection: reflection needs T > n_fft/2,
            # and the enhance command's chunks or short clips may be shorter.
            return torch.stft(rearrange(wav.float(), "b 1 t -> b t"), self.n_fft, self.hop_length, window=self.window,
                              center=True, pad_mode="constant", return_complex=True)

    def istft(self, spec: Tensor, length: int) -> Tensor:
        """complex spectrum (B, F, N) -> wav (B, 1, length): the least-squares inverse (Griffin &
        Lim 1984), exact for an unmodified spectrum."""
        with torch.autocast(spec.device.type, enabled=False):
            wav = torch.istft(spec, self.n_fft, self.hop_length, window=self.window, center=True, length=length)
        return rearrange(wav, "b t -> b 1 t")

    def encode(self, wav: Tensor) -> Tensor:
        """wav (B, 1, T) -> z (B, latent_dim, N) with N = n_frames(T)."""
        spec = self.stft(wav)
        mag = spec.abs()
        compressed = mag.clamp_min(1e-8) ** (self.compression - 1)  # |X|^(c-1), so that Re, Im scale as |X|^c
        features = torch.cat([mag * compressed, spec.real * compressed, spec.imag * compressed], dim=1)  # (B, 3F, N)
        return rearrange(self.analysis(rearrange(features, "b f n -> b n f")), "b n d -> b d n")

    def mask(self, z: Tensor, spec: Tensor) -> Tensor:
        """z (B, latent_dim, N), spec (B, F, N) the reference spectrum -> mask (B, F, N) with
        |M| < mask_bound (complex for mask='complex', real for mask='gate')."""
        p = rearrange(self.synthesis(rearrange(z, "b d n -> b n d")).float(), "b n (two f) -> b f n two", two=2)
        if self.mask_type == "gate":
            # A learned spectral gate: per bin, a sigmoid of the bin's own level (log10 power, less
            # the item's mean, so the gate does not depend on the recording level) with an
            # intercept and a slope set by the latent frame: M = bound * sigmoid(a + b * level).
            # Wiener-like gains are functions of a bin's level against a noise floor; a linear
            # map from a frame vector to 257 per-bin gains would have to learn that per bin.
            level = torch.log10(spec.abs().square() + 1e-10)
            if self.gate_level == "item_mean":
                level = level - level.mean(dim=(1, 2), keepdim=True)
            else:
                # Each bin against its own floor over the item's frames (a low quantile: the
                # minimum-statistics noise estimate of Martin, "Noise power spectral density
                # estimation based on optimal smoothing and minimum statistics", IEEE TSAP 2001),
                # i.e. an a posteriori SNR, the variable of Wiener-type gains. Against the item's
                # mean instead, the quiet high bins of speech look like noise whatever the SNR.
                level = level - torch.quantile(level, self.gate_floor_quantile, dim=2, keepdim=True)
            # min_gain: the spectral floor of Wiener-type gains (G_min; Ephraim & Malah, "Speech
            # enhancement using a minimum mean-square error log-spectral amplitude estimator",
            # IEEE TASSP 1985; Berouti et al. 1979): a gate never removes more than -20 log10(G_min)
            # dB, which trades residual noise for fewer deleted weak speech bins.
            gate = torch.sigmoid(p[..., 0] + p[..., 1] * level)
            return self.min_gain + (self.mask_bound - self.min_gain) * gate
        m = torch.view_as_complex(p.contiguous())
        magnitude = m.abs()
        # bound * tanh(|m|) * m / |m|, written so that |m| -> 0 is smooth: tanh(r)/r -> 1.
        gain = self.mask_bound * torch.where(magnitude > 1e-6, torch.tanh(magnitude) / magnitude.clamp_min(1e-6), torch.ones_like(magnitude))
        return m * gain

    def apply_mask(self, mask: Tensor, spec: Tensor, length: int) -> Tensor:
        """mask (B, F, N), spec (B, F, N) the reference spectrum -> ISTFT(mask * spec) (B, 1, length)."""
        return self.istft(mask * spec, length)

    def decode(self, z: Tensor, length: int, reference: Tensor | None = None) -> Tensor:
        """z (B, latent_dim, N), reference (B, 1, T) the input waveform whose spectrum is masked
        -> wav (B, 1, length)."""
        if reference is None:
            raise ValueError("STFTCodec.decode needs reference= the input waveform: it masks the input's spectrum")
        if reference.shape[0] != z.shape[0]:
            raise ValueError(f"reference batch {reference.shape[0]} != latent batch {z.shape[0]}")
        spec = self.stft(reference)
        return self.apply_mask(self.mask(z, spec), spec, length)


def _window(kind: str, n_fft: int) -> Tensor:
    # Periodic Hann at hop n_fft/4 (75 % overlap) or its square root: both satisfy the
    # nonzero-overlap-add condition, so torch.istft inverts the STFT exactly.
    if kind == "hann":
        return torch.hann_window(n_fft)
    if kind == "sqrt_hann":
        return torch.hann_window(n_fft).sqrt()
    raise ValueError(f"window={kind!r}: use 'hann' or 'sqrt_hann'")
