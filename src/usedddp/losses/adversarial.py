"""LS-GAN (Mao et al. 2017) and feature-matching losses, one helper for all three ensembles.

Written here rather than taken from dac.nn.loss.GANLoss, which binds one discriminator and
AudioSignal inputs; these take the ensembles' typed outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from usedddp.outputs import DiscriminatorOutput, StackedDiscriminatorOutput


def discriminator_loss(real: DiscriminatorOutput, fake: DiscriminatorOutput) -> Tensor:
    """sum_k E[(D_k(real) - 1)^2] + E[D_k(fake)^2]; 0 at the discriminator's optimum."""
    return sum(((r - 1) ** 2).mean() + (f**2).mean() for r, f in zip(real.logits, fake.logits))


def generator_loss(fake: DiscriminatorOutput) -> Tensor:
    """sum_k E[(D_k(fake) - 1)^2]; 0 when every fake is scored real."""
    return sum(((f - 1) ** 2).mean() for f in fake.logits)


def feature_matching_loss(real: DiscriminatorOutput, fake: DiscriminatorOutput, paired: bool) -> Tensor:
    """L1 between hidden features of real and fake, averaged over layers and resolutions.

    paired: real[i] is the target of fake[i] (MelGAN-style, frame by frame). Unpaired (stage 3:
    the clean and noise 'real' examples are independent corpus draws) compares the features'
    means over batch and time (the feature matching of Salimans et al. 2016), which does not
    pretend the two signals are aligned.
    """
    losses = []
    for real_maps, fake_maps in zip(real.features, fake.features):
        for r, f in zip(real_maps, fake_maps):
            r = r.detach()
            if not paired:
                r, f = r.mean(dim=(0, 2)), f.mean(dim=(0, 2))
            losses.append((r - f).abs().mean())
    return torch.stack(losses).mean()


# -- the same losses on StackedDiscriminatorOutput: one value per ensemble, (E,) ---------------


def stacked_discriminator_loss(real: StackedDiscriminatorOutput, fake: StackedDiscriminatorOutput) -> Tensor:
    """discriminator_loss of each stacked ensemble, (E,)."""
    return sum(((r - 1) ** 2).mean(dim=(0, 2, 3)) + (f**2).mean(dim=(0, 2, 3)) for r, f in zip(real.logits, fake.logits))


def stacked_generator_loss(fake: StackedDiscriminatorOutput) -> Tensor:
    """generator_loss of each stacked ensemble, (E,)."""
    return sum(((f - 1) ** 2).mean(dim=(0, 2, 3)) for f in fake.logits)


def stacked_feature_matching_loss(real: StackedDiscriminatorOutput, fake: StackedDiscriminatorOutput, paired: list[bool]) -> Tensor:
    """feature_matching_loss of each stacked ensemble, (E,); paired[e] as its `paired`.

    The maps are zero-padded to their resolution's widest band, equal (zero) in real and fake,
    so an L1 summed over whole rows and weighted by 1/width per map's real columns is each map's
    mean; the mean over a resolution's maps and the resolutions is then one sum over
    (resolutions x maps)."""
    runs, start = [], 0
    for e in range(1, len(paired) + 1):  # consecutive ensembles of one kind, sliced together
        if e == len(paired) or paired[e] != paired[start]:
            runs.append((start, e, paired[start]))
            start = e
    values = []
    for lo, hi, is_paired in runs:
        total = 0
        for r, f, weights in zip(real.features, fake.features, real.column_weights):
            r, f = r[:, lo:hi].detach(), f[:, lo:hi]  # (N, E', bands, C, frames, columns)
            if is_paired:
                l1 = (r - f).abs().sum(dim=(0, 3, 4)) / (r.shape[0] * r.shape[3] * r.shape[4])
            else:  # means over batch and time (Salimans et al. 2016), then L1 over channels
                l1 = (r.mean(dim=(0, 4)) - f.mean(dim=(0, 4))).abs().sum(dim=2) / r.shape[3]
            total = total + (l1.float() * weights).sum(dim=(1, 2))  # (E',)
        maps = sum(len(w) * len(w[0]) for w in real.widths)
        values.append(total / maps)
    return torch.cat(values) if len(values) > 1 else values[0]
