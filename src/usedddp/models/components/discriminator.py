"""Multi-resolution complex-STFT discriminator ensembles (Klement, "Speech Enhancement using
Neural Audio Codecs", §2: an ensemble of STFT discriminators with different window sizes, as in
neural audio codecs)."""

from __future__ import annotations

import warnings

import torch
from einops import rearrange
from torch import Tensor, nn

from usedddp.outputs import DiscriminatorOutput, StackedDiscriminatorOutput

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    from dac.model.discriminator import BANDS, MRD, WNConv2d


class ComplexSTFTDiscriminator(MRD):
    """DAC's multi-band complex-spectrogram discriminator, with the STFT taken in float32 and
    the width configurable.

    DAC computes the STFT through audiotools' AudioSignal, which fails on bf16 inputs under
    mixed precision. DAC fixes 32 channels; fewer make a CPU run affordable (the layer layout
    below is DAC's).
    """

    def __init__(self, window_length: int, hop_factor: float = 0.25, sample_rate: int = 16000, bands: list = BANDS, channels: int = 32):
        super().__init__(window_length, hop_factor=hop_factor, sample_rate=sample_rate, bands=bands)
        if channels != 32:
            ch = channels
            self.band_convs = nn.ModuleList(
                [
                    nn.ModuleList(
                        [
                            WNConv2d(2, ch, (3, 9), (1, 1), padding=(1, 4)),
                            WNConv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4)),
                            WNConv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4)),
                            WNConv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4)),
                            WNConv2d(ch, ch, (3, 3), (1, 1), padding=(1, 1)),
                        ]
                    )
                    for _ in self.bands
                ]
            )
            self.conv_post = WNConv2d(ch, 1, (3, 3), (1, 1), padding=(1, 1), act=False)

    def spectrogram(self, x: Tensor) -> list[Tensor]:
        hop = self.stft_params.hop_length
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            # match_stride padding as in audiotools: frames = T / hop.
            pad = (self.window_length - hop) // 2
            x = nn.functional.pad(x, (pad, pad + (-x.shape[-1]) % hop), mode="reflect")
            spec = torch.stft(
                rearrange(x, "b 1 t -> b t"),
                n_fft=self.window_length,
                hop_length=hop,
                window=torch.hann_window(self.window_length, device=x.device),
                center=True,
                return_complex=True,
            )
            spec = spec[..., 2:-2] if spec.shape[-1] > 4 else spec
        spec = rearrange(torch.view_as_real(spec), "b f t c -> b c t f")
        return [spec[..., lo:hi] for lo, hi in self.bands]


class STFTDiscriminatorEnsemble(nn.Module):
    """One ensemble: a complex-STFT discriminator per window length.

    Inputs are DC-removed and peak-normalised (as in DAC's Discriminator.preprocess), so the
    ensemble judges spectral shape, not level: prior corpora are recorded at arbitrary gains.
    """

    def __init__(
        self,
        fft_sizes: tuple[int, ...] = (2048, 1024, 512),
        sample_rate: int = 16000,
        hop_factor: float = 0.25,
        bands: tuple = tuple(BANDS),
        channels: int = 32,
    ):
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.discriminators = nn.ModuleList(
                [ComplexSTFTDiscriminator(n, hop_factor, sample_rate, [tuple(b) for b in bands], channels) for n in fft_sizes]
            )
        # Each convolution's output is used only by its activation (a convolution's backward needs
        # its input, not its output): in place, the activation's output is the buffer the next
        # convolution saves anyway, one saved map per layer instead of two. The same numbers.
        for module in self.modules():
            if isinstance(module, nn.LeakyReLU):
                module.inplace = True

    def forward(self, wav: Tensor) -> DiscriminatorOutput:
        """wav (B, 1, T) -> DiscriminatorOutput."""
        wav = wav - wav.mean(dim=-1, keepdim=True)
        wav = 0.8 * wav / (wav.abs().amax(dim=-1, keepdim=True) + 1e-9)
        maps = [d(wav) for d in self.discriminators]
        return DiscriminatorOutput(logits=[m[-1] for m in maps], features=[m[:-1] for m in maps])


class JointEnsembles:
    """E ensembles of one layout evaluated together: per resolution, one grouped convolution
    per layer over every ensemble and band (groups = E x bands) in place of E x bands small ones.

    The step of the three adversarial games is bound by kernel launches, not arithmetic (on an
    H100 a dac16k step at batch 8 ran ~50,000 launches, mostly these 3 ensembles x 8 resolutions x
    5 bands x 5 layers of small convolutions). Bands of different widths are held zero-padded
    to the widest; the padding is re-zeroed after every layer, so each band's convolution sees
    the zeros its own padding gives it and the real columns equal the per-band network's. The
    weight norm (Salimans & Kingma, "Weight Normalization", 2016) normalises each output channel
    on its own, so one `_weight_norm` over the stacked parameters of every same-shaped layer is
    the per-layer one. The parameters stay the ensembles' own (state_dict keys, checkpoints and
    optimizers are untouched); this object holds references only, no state.

    wav (N, E, T), ensemble e judging wav[:, e] -> StackedDiscriminatorOutput.
    """

    def __init__(self, ensembles: list[STFTDiscriminatorEnsemble]):
        self.ensembles = list(ensembles)
        first = self.ensembles[0].discriminators
        for other in self.ensembles[1:]:
            if _layout(other.discriminators) != _layout(first):
                raise ValueError("JointEnsembles needs ensembles of one layout (FFT sizes, bands, channels)")
        self.window_lengths = [d.window_length for d in first]
        self.hops = [d.stft_params.hop_length for d in first]
        self.bands = [list(d.bands) for d in first]
        n_layers = len(first[0].band_convs[0])
        self.convs = [[d.band_convs[0][layer][0] for layer in range(n_layers)] for d in first]
        self.posts = [d.conv_post for d in first]
        # Per resolution, band and layer: the real width of the map (input width for layer 0).
        self.widths = []
        for bands, convs in zip(self.bands, self.convs):
            per_band = []
            for lo, hi in bands:
                widths, w = [], hi - lo
                for conv in convs:
                    w = (w + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1
                    widths.append(w)
                per_band.append(widths)
            self.widths.append(per_band)
        # The weight-normed convolutions, grouped by the shape of their direction parameter v:
        # one weight norm per group. Entry (r, l): resolution r's layer l (l = n_layers: conv_post),
        # whose modules are ordered ensemble-major, then band (the channel order of the input).
        E = len(self.ensembles)
        self.entries, self.groups = [], {}
        for r in range(len(first)):
            for layer in range(n_layers + 1):
                if layer < n_layers:
                    modules = [ens.discriminators[r].band_convs[b][layer][0] for ens in self.ensembles for b in range(len(self.bands[r]))]
                else:
                    modules = [ens.discriminators[r].conv_post for ens in self.ensembles]
                self.groups.setdefault(tuple(modules[0].weight_v.shape), []).append(((r, layer), modules))
                self.entries.append((r, layer))
        self.n_layers, self.n_ensembles = n_layers, E
        self._static: dict = {}

    # -- parameters ------------------------------------------------------------------------------

    def weights(self) -> dict[tuple[int, int], tuple[Tensor, Tensor]]:
        """(r, l) -> the grouped convolution's (weight (E*bands*C_out, C_in, kh, kw), bias), from
        one weight norm per parameter shape and one concatenation of the biases."""
        out = {}
        biases, sizes = [], []
        for shape, entries in self.groups.items():
            mods = [m for _, modules in entries for m in modules]
            v = torch.cat([m.weight_v for m in mods])
            g = torch.cat([m.weight_g for m in mods])
            weight = torch._weight_norm(v, g, 0)
            split = [len(modules) * shape[0] for _, modules in entries]
            for (key, _), w in zip(entries, weight.split(split)):
                out[key] = w
            biases += [m.bias for m in mods]
            sizes += [(key, s) for (key, _), s in zip(entries, split)]
        bias = torch.cat(biases).split([s for _, s in sizes])
        return {key: (out[key], b) for (key, _), b in zip(sizes, bias)}

    # -- index tensors ---------------------------------------------------------------------------

    def _tensors(self, r: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        """Resolution r's fixed index and mask tensors, built once per device and dtype."""
        key = (r, device, dtype)
        if key not in self._static:
            bands, widths = self.bands[r], self.widths[r]
            n_bins = self.window_lengths[r] // 2 + 1
            padded_in = max(hi - lo for lo, hi in bands)
            # Input columns: band b's bins, then the zero bin (index n_bins) up to the padded width.
            gather = [lo + j if j < hi - lo else n_bins for lo, hi in bands for j in range(padded_in)]
            padded = [max(band[layer] for band in widths) for layer in range(self.n_layers)]
            # (E*bands*C, 1, width): broadcasts over the grouped convolution's output channels.
            channels = [conv.out_channels for conv in self.convs[r]]
            masks = [torch.tensor([[1.0 if j < band[layer] else 0.0 for j in range(padded[layer])] for band in widths], dtype=dtype)
                     .repeat_interleave(channels[layer], 0).repeat(self.n_ensembles, 1)[:, None, :].to(device) for layer in range(self.n_layers)]
            last = padded[-1]
            post = [b * last + j for b, band in enumerate(widths) for j in range(band[-1])]
            column_weights = torch.cat([
                torch.tensor([[1.0 / band[layer] if j < band[layer] else 0.0 for j in range(padded[layer])] for band in widths])
                for layer in range(self.n_layers)], dim=1).to(device=device, dtype=torch.float32)
            self._static[key] = {
                "gather": torch.tensor(gather, device=device),
                "masks": masks,
                "post": torch.tensor(post, device=device),
                "column_weights": column_weights,
                "window": torch.hann_window(self.window_lengths[r], device=device),
            }
        return self._static[key]

    # -- forward ---------------------------------------------------------------------------------

    def spectrogram(self, wav: Tensor, r: int) -> Tensor:
        """wav (N, E, T) -> bands (N, E*bands*2, frames, padded width): ComplexSTFTDiscriminator's
        spectrogram, each band's bins zero-padded to the widest band."""
        n, e = wav.shape[:2]
        window, hop = self.window_lengths[r], self.hops[r]
        static = self._tensors(r, wav.device, torch.float32)
        with torch.autocast(wav.device.type, enabled=False):
            x = rearrange(wav.float(), "n e t -> (n e) t")
            pad = (window - hop) // 2
            x = nn.functional.pad(x, (pad, pad + (-x.shape[-1]) % hop), mode="reflect")
            spec = torch.stft(x, n_fft=window, hop_length=hop, window=static["window"], center=True, return_complex=True)
            spec = spec[..., 2:-2] if spec.shape[-1] > 4 else spec
            spec = nn.functional.pad(torch.view_as_real(spec), (0, 0, 0, 0, 0, 1))  # (NE, bins + 1, frames, 2)
            spec = spec.index_select(1, static["gather"])
        return rearrange(spec, "(n e) (b w) t c -> n (e b c) t w", n=n, b=len(self.bands[r]))

    def __call__(self, wav: Tensor) -> StackedDiscriminatorOutput:
        n, E, _ = wav.shape
        if E != self.n_ensembles:
            raise ValueError(f"expected {self.n_ensembles} ensembles' signals on axis 1, got {E}")
        wav = wav - wav.mean(dim=-1, keepdim=True)
        wav = 0.8 * wav / (wav.abs().amax(dim=-1, keepdim=True) + 1e-9)
        weights = self.weights()
        logits, features, column_weights = [], [], []
        for r in range(len(self.window_lengths)):
            x = self.spectrogram(wav, r)
            nb = len(self.bands[r])
            maps = []
            for layer, conv in enumerate(self.convs[r]):
                w, b = weights[(r, layer)]
                x = nn.functional.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, groups=E * nb)
                x = nn.functional.leaky_relu(x, 0.1)
                static = self._tensors(r, x.device, x.dtype)
                x = x * static["masks"][layer]
                maps.append(rearrange(x, "n (e b c) t w -> n e b c t w", e=E, b=nb))
            features.append(torch.cat(maps, dim=-1))
            x = rearrange(x, "n (e b c) t w -> n (e c) t (b w)", e=E, b=nb).index_select(-1, static["post"])
            w, b = weights[(r, self.n_layers)]
            post = self.posts[r]
            logits.append(nn.functional.conv2d(x, w, b, post.stride, post.padding, post.dilation, groups=E))
            column_weights.append(self._tensors(r, x.device, torch.float32)["column_weights"])
        return StackedDiscriminatorOutput(logits=logits, features=features, column_weights=column_weights, widths=self.widths)


def _layout(discriminators: nn.ModuleList) -> list:
    return [(d.window_length, d.stft_params.hop_length, list(d.bands),
             [[(tuple(layer[0].weight_v.shape), layer[0].stride, layer[0].padding) for layer in band] for band in d.band_convs],
             tuple(d.conv_post.weight_v.shape)) for d in discriminators]
