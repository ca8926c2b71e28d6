"""The three USE-DDP training stages, as one spec handed to the LightningModule and the DataModule.

Called "training stages" (1, 2, 3) throughout, never "stage" alone: Lightning's own `stage`
argument (`setup(stage="fit")`) names something else.

Klement, "Speech Enhancement using Neural Audio Codecs" (Brno University of Technology), §3, the
schedule of Klement et al., "Unsupervised Speech Enhancement using Data-defined Priors" (USE-DDP):
(1) pretrain the encoder, the clean branch, the decoder and the clean-speech discriminator on
mixtures simulated from the prior corpora; (2) add the noise branch and its discriminator and
train both streams and the reconstruction of the noisy input; (3) drop the clean-speech target,
train on real noisy recordings with only the adversarial priors and the mixture consistency.
The noisy ensemble judges the reconstruction, so it plays from stage 2 on.
"""

from __future__ import annotations

from dataclasses import dataclass

ENSEMBLES = ("clean", "noise", "noisy")


@dataclass(frozen=True)
class TrainingStage:
    number: int
    streams: tuple[str, ...]  # generator branches that run
    ensembles: tuple[str, ...]  # discriminator ensembles that play
    targets: tuple[str, ...]  # streams with a supervised target (simulated mixtures)
    mixture: bool  # reconstruction of the input from alpha * s_hat + beta * n_hat
    data: str  # "simulated": mixtures of prior draws; "real_noisy": real recordings + unpaired prior draws

    @property
    def description(self) -> str:
        return {"simulated": "mixtures simulated from the prior corpora",
                "real_noisy": "real noisy recordings + independent prior draws, no clean target"}[self.data]


TRAINING_STAGES = {
    1: TrainingStage(1, streams=("clean",), ensembles=("clean",), targets=("clean",), mixture=False, data="simulated"),
    2: TrainingStage(2, streams=("clean", "noise"), ensembles=ENSEMBLES, targets=("clean", "noise"), mixture=True, data="simulated"),
    3: TrainingStage(3, streams=("clean", "noise"), ensembles=ENSEMBLES, targets=(), mixture=True, data="real_noisy"),
}


def training_stage(number: int | TrainingStage) -> TrainingStage:
    """The spec of training stage `number` (1, 2 or 3); a spec is returned as it is."""
    if isinstance(number, TrainingStage):
        return number
    try:
        return TRAINING_STAGES[int(number)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"training stage must be one of {sorted(TRAINING_STAGES)}, got {number!r}") from None
