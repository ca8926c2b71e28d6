"""Enhanced example clips written next to a run: the noisy input and both output streams."""

from __future__ import annotations

from pathlib import Path

import torch

from usedddp.audio import save_audio


@torch.no_grad()
def write_examples(generator: torch.nn.Module, dataset, out_dir: Path, n: int) -> list[Path]:
    """For the first n validation clips, write <name>_{noisy,clean,noise}.wav (clean and noise
    are the generator's two streams); returns the written paths."""
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    written = []
    try:
        for i in range(min(n, len(dataset))):
            item = dataset[i]
            stem = Path(item.name[0]).with_suffix("").as_posix().replace("/", "__")
            out = generator(item.noisy[None].to(device))
            streams = {"noisy": item.noisy, "clean": out.clean[0], "noise": out.noise[0]}
            if item.clean is not None:
                streams["reference"] = item.clean
            for kind, wav in streams.items():
                written.append(save_audio(out_dir / f"{stem}_{kind}.wav", wav.cpu(), generator.sample_rate, overwrite=True))
    finally:
        generator.train(was_training)
    return written
