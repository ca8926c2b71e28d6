"""LS-GAN (Mao et al. 2017) and feature-matching losses, one helper for all three ensembles.

Written here rather than taken from dac.nn.loss.GANLoss, which binds one discriminator and
AudioSignal inputs; these take the ensembles' typed outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from usedddp.outputs import DiscriminatorOutput


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
