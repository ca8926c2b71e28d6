"""From a checkpoint to enhanced audio, for every method: the model rebuilt from the config stored
inside the checkpoint (USE-DDP: the generator alone, no discriminators or losses; UDiffSE: the
score network's EMA weights and the posterior sampler; RVAE-NMF: the VAE prior and its EM), and the chunked overlap-add that bounds
memory.

    model = load_enhancer("outputs/demo/2026-...")      # a run dir or any .ckpt it wrote
    clean, noise = enhance_waveform(model.enhancer, wav, chunk=160000, overlap=16000)  # wav (1, T)

usedddp.enhance walks files with it, usedddp.evaluate enhances test sets with it, and
scripts/benchmark_enhance.py times it.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from usedddp.checkpoints import find_checkpoint, load_checkpoint
from usedddp.config import register_resolvers
from usedddp.data.datasets import VALIDATION_LEVEL_DB, level_gain
from usedddp.models.build import split_weights
from usedddp.models.generator import Generator, build_generator

log = logging.getLogger("usedddp.inference")


class InferenceError(ValueError):
    """A model cannot be loaded or run as asked; the message names the file or the option."""


class Enhancer(Protocol):
    """What the enhance path runs: (1, 1, t) noisy -> {"clean": (1, 1, t), "noise": (1, 1, t) or None}."""

    sample_rate: int
    hop_length: int  # chunks start on multiples of it
    nfe: int  # network evaluations so far (the cost column)

    def __call__(self, x: torch.Tensor, streams: tuple[str, ...] = ("clean", "noise")) -> dict[str, torch.Tensor | None]: ...


class GeneratorEnhancer:
    """A USE-DDP generator as an Enhancer: one network evaluation per chunk."""

    def __init__(self, generator: Generator):
        self.generator, self.sample_rate, self.hop_length, self.nfe = generator, generator.sample_rate, int(generator.codec.hop_length), 0

    def __call__(self, x: torch.Tensor, streams: tuple[str, ...] = ("clean", "noise")) -> dict[str, torch.Tensor | None]:
        self.nfe += 1
        out = self.generator(x.to(next(self.generator.parameters()).device), streams=streams)
        return {"clean": out.clean, "noise": out.noise}


def as_enhancer(model) -> Enhancer:
    return GeneratorEnhancer(model) if isinstance(model, Generator) else model


@dataclass
class LoadedModel:
    enhancer: Enhancer  # on the requested device, eval mode
    config: DictConfig  # the training run's config (model, data, priors) as the checkpoint records it
    checkpoint: Path
    stage: int | str | None  # the training stage that wrote the checkpoint (USE-DDP: 1-3; UDiffSE: prior)
    run_dir: Path | None  # the run directory, when the checkpoint still sits in one
    method: str = "use_ddp"
    label: str = "USE-DDP"  # the system's name in tables

    @property
    def generator(self) -> Generator:
        if not isinstance(self.enhancer, GeneratorEnhancer):
            raise InferenceError(f"{self.checkpoint}: a {self.method} model has no USE-DDP generator")
        return self.enhancer.generator


def check_device(device: str | torch.device) -> torch.device:
    """A torch device that exists here, or an InferenceError saying why not."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InferenceError(f"device={device}: not a torch device ({error}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InferenceError(f"device={device}: no CUDA device is available here (torch {torch.__version__}, "
                                 f"built for CUDA {torch.version.cuda}); use device=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InferenceError(f"device={device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise InferenceError(f"device={device}: use cpu, cuda or cuda:N")
    return device


def _run_dir(checkpoint: Path) -> Path | None:
    """<run> for <run>/stage<k>/checkpoints/<name>.ckpt, when <run>/.hydra/config.yaml exists."""
    parents = checkpoint.resolve().parents
    if len(parents) > 2 and (parents[2] / ".hydra" / "config.yaml").is_file():
        return parents[2]
    return None


def run_config(checkpoint: Path, state: dict) -> DictConfig:
    """The config a checkpoint was trained with: the copy inside it, or (checkpoints written
    before configs were stored in them) the run directory's .hydra/config.yaml."""
    stored = (state.get("usedddp") or {}).get("config")
    if stored is not None:
        return OmegaConf.create(stored)
    run_dir = _run_dir(checkpoint)
    if run_dir is None:
        raise InferenceError(f"{checkpoint}: this checkpoint stores no config (written by an older usedddp) and is not "
                             "inside its run directory (<run>/stage<k>/checkpoints/); pass it there, beside <run>/.hydra")
    register_resolvers()
    return OmegaConf.load(run_dir / ".hydra" / "config.yaml")


def model_config(config: DictConfig, source: str | Path = "the config") -> dict:
    """The `model` node as plain containers, resolved, without the training-time weight file."""
    if "model" not in config:
        raise InferenceError(f"{source}: no `model` node (not a usedddp training config)")
    try:
        model, _ = split_weights(config.model)  # the training-time start; the checkpoint holds the weights
    except Exception as error:
        raise InferenceError(f"{source}: the model config does not resolve ({type(error).__name__}: {error})") from error
    return model


def build_generator_from_config(model: dict, source: str | Path = "the config") -> Generator:
    """The generator of a model config (the codec and the branch partial), nothing else."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*weight_norm.*is deprecated")
            return build_generator(instantiate(model["codec"]), instantiate(model["branch"]))
    except Exception as error:
        raise InferenceError(f"{source}: cannot build the generator from its model config ({type(error).__name__}: {error})") from error


def _read(ckpt: str | Path) -> tuple[Path, dict, DictConfig]:
    try:
        checkpoint = find_checkpoint(ckpt)
        state = load_checkpoint(checkpoint)
    except (FileNotFoundError, ValueError) as error:
        raise InferenceError(str(error)) from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise InferenceError(f"{checkpoint}: not a usedddp training checkpoint (no 'state_dict')")
    return checkpoint, state, run_config(checkpoint, state)


def load_generator(ckpt: str | Path, device: str | torch.device = "cpu", engine: str = "reference") -> LoadedModel:
    """The USE-DDP generator of a checkpoint file or a run directory (its latest stage's
    last.ckpt), in eval mode on `device`. Rebuilt from the config the checkpoint stores (never from
    pickled objects); its weights are loaded with torch.load(weights_only=True), strictly.
    `engine` (ENGINES, or auto / exact: resolve_engine): how its codec runs; the default is the
    training graph."""
    device = check_device(device)
    checkpoint, state, config = _read(ckpt)
    return _use_ddp(checkpoint, state, config, device, engine)


# How the USE-DDP generator's DAC codec runs at inference: the options of its inference graph
# (models/components/dac_inference.InferenceDAC), or None for the training modules as they are.
# The branches and their quantizers always run in float32 as trained.
ENGINES: dict[str, dict | None] = {
    "reference": None,  # the training graph, unoptimised
    "float32": {},  # the same output to float rounding
    "bf16-decoder": {"decoder_dtype": torch.bfloat16},  # codes exact (float32 encoder); the decoder's error is smooth
    "bf16": {"encoder_dtype": torch.bfloat16, "decoder_dtype": torch.bfloat16},  # a code near a quantizer boundary may flip
}


def resolve_engine(engine: str, device: torch.device) -> str:
    """The engine a name stands for on `device`:
    - exact: float32 on a CPU (the reference's output to float rounding, about twice as fast);
      reference on CUDA (the inference graph is not measured on GPUs yet);
    - auto: bf16-decoder on a CPU with AMX (about 3x faster than exact there, and 37-38 dB SI-SDR
      against the reference with dac16k's random weights: benchmarks/enhance_engines_cpu.json),
      otherwise as exact.
    Other names are checked and returned."""
    if engine in ("auto", "exact"):
        if device.type != "cpu":
            return "reference"
        return "bf16-decoder" if engine == "auto" and torch.cpu._is_amx_tile_supported() else "float32"
    if engine not in ENGINES:
        raise InferenceError(f"engine={engine}: use auto, exact or one of {sorted(ENGINES)}")
    return engine


def inference_generator(generator: Generator, engine: str) -> Generator:
    """The generator with its DAC codec rebuilt as the inference graph `engine` names (the
    branches are shared, not copied); unchanged for `reference` or a codec without such a graph."""
    from usedddp.models.components.dac_codec import DACCodec
    from usedddp.models.components.dac_inference import InferenceDAC

    options = ENGINES[engine]
    if options is None or not isinstance(generator.codec, DACCodec):
        return generator
    codec = InferenceDAC(generator.codec, **options)
    return Generator(codec, generator.branches["clean"], generator.branches["noise"]).eval()


def _use_ddp(checkpoint: Path, state: dict, config: DictConfig, device: torch.device, engine: str = "auto") -> LoadedModel:
    generator = build_generator_from_config(model_config(config, checkpoint), checkpoint)
    weights = {k.removeprefix("generator."): v for k, v in state["state_dict"].items() if k.startswith("generator.")}
    try:
        generator.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise InferenceError(f"{checkpoint}: weights do not match the model its config describes: {error}") from error
    generator = generator.to(device).eval()
    stage = (state.get("usedddp") or {}).get("stage")
    log.info("model: %s (stage %s, %d Hz, %.1f M generator parameters)", checkpoint, stage if stage is not None else "?",
             generator.sample_rate, sum(p.numel() for p in generator.parameters()) / 1e6)
    engine = resolve_engine(engine, device)
    generator = inference_generator(generator, engine)
    log.info("engine: %s (%s)", engine, type(generator.codec).__name__)
    return LoadedModel(GeneratorEnhancer(generator), config, checkpoint, None if stage is None else int(stage),
                       _run_dir(checkpoint), "use_ddp", f"USE-DDP stage {stage}")


def load_enhancer(ckpt: str | Path, device: str | torch.device = "cpu", method: dict | None = None,
                  progress: bool = False, engine: str = "auto") -> LoadedModel:
    """The enhancer of any run's checkpoint (or run directory): the method comes from the run's
    config (`method.name`; runs without one are USE-DDP). `method` holds overrides of the run's
    method options (e.g. {"sampler": "fast"}); None values are ignored. A USE-DDP run has none.
    `engine`: how a USE-DDP run's DAC codec computes (ENGINES, or auto / exact: resolve_engine);
    the learned-prior methods have one engine and take auto, exact or reference."""
    device = check_device(device)
    engine = str(engine)
    if str(ckpt).endswith(".onnx"):
        from usedddp.export import load_onnx

        if method and any(v is not None for v in method.values()) or engine not in ("auto", "exact", "reference") or device.type != "cpu":
            raise InferenceError(f"{ckpt}: an exported ONNX model runs as exported, on the CPU (no method.* options, engine or device)")
        return load_onnx(Path(ckpt))
    checkpoint, state, config = _read(ckpt)
    name = str(OmegaConf.select(config, "method.name", default="use_ddp"))
    overrides = {k: v for k, v in (method or {}).items() if v is not None}
    if name == "use_ddp":
        if overrides:
            raise InferenceError(f"{checkpoint}: method.{sorted(overrides)[0]}=... is an option of the learned-prior "
                                 "methods (UDiffSE, RVAE-NMF); this is a USE-DDP run, which has none")
        return _use_ddp(checkpoint, state, config, device, engine)
    if engine not in ("auto", "exact", "reference"):
        raise InferenceError(f"{checkpoint}: engine={engine} applies to USE-DDP's DAC codec; this {name} run takes auto, exact or reference")
    if name == "udiffse":
        from usedddp.methods.loading import load_udiffse

        return load_udiffse(checkpoint, state, config, device, overrides, progress)
    if name == "rvae":
        from usedddp.methods.loading import load_vae

        return load_vae(checkpoint, state, config, device, overrides, progress)
    raise InferenceError(f"{checkpoint}: method {name!r} is not one this usedddp can run")


# --------------------------------------------------------------------------------------------
# One waveform


def normalise_level(wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(wav at the level the model validated on, the gain applied): the whole file at -25 dBFS
    RMS (the training recipe's validation level); divide the outputs by the gain to undo it."""
    gain = level_gain(wav, VALIDATION_LEVEL_DB)
    return wav * gain, gain


def chunk_bounds(length: int, chunk: int, overlap: int, align: int = 1) -> list[tuple[int, int]]:
    """(start, end) of the chunks covering `length` samples: starts on multiples of `align` (the
    codec's hop, so every chunk sees the same frame grid as the whole file), neighbours
    overlapping by at least `overlap`, the last chunk running to the end (< chunk + align long)."""
    if length <= chunk:
        return [(0, length)]
    step = max(align, (chunk - overlap) // align * align)
    last = (length - chunk) // align * align
    starts = list(range(0, last, step)) + [last]
    return [(s, s + chunk) for s in starts[:-1]] + [(last, length)]


def fade(n: int) -> torch.Tensor:
    """A strictly positive raised-cosine fade-in of n samples (its reverse fades out; they sum to 1)."""
    return torch.sin(0.5 * math.pi * (torch.arange(n, dtype=torch.float32) + 0.5) / n) ** 2


def overlap_add(fn: Callable[[torch.Tensor], dict[str, torch.Tensor | None]], wav: torch.Tensor, chunk: int | None = None,
                overlap: int = 0, align: int = 1) -> dict[str, torch.Tensor | None]:
    """Run `fn` (x (1, 1, t) -> {name: (1, 1, t) or None}) over wav (1, T) in chunks of about
    `chunk` samples overlapping by at least `overlap`, starting on multiples of `align`, and
    cross-fade the outputs by overlap-add (complementary raised-cosine fades, normalised by the
    window sum): {name: (1, T) float32 on the CPU, or None}. Memory does not grow with the file;
    a waveform no longer than one chunk (or chunk=None) is run whole."""
    if wav.ndim != 2 or wav.shape[0] != 1:
        raise ValueError(f"expected a mono waveform of shape (1, T), got {tuple(wav.shape)}")
    length = wav.shape[-1]
    chunk = length if chunk is None else int(chunk)
    overlap = int(overlap)
    if not 0 <= overlap < chunk or chunk < align:
        raise ValueError(f"need 0 <= overlap < chunk and chunk >= {align} (one model frame), got overlap={overlap}, chunk={chunk}")
    bounds = chunk_bounds(length, chunk, overlap, align)
    if len(bounds) == 1:
        return {k: None if v is None else v[0].float().cpu() for k, v in fn(wav[None]).items()}
    acc: dict[str, torch.Tensor | None] = {}
    norm = torch.zeros(length)
    for i, (start, end) in enumerate(bounds):
        weight = torch.ones(end - start)
        if i > 0 and (n := bounds[i - 1][1] - start) > 0:  # fade in over the previous chunk's tail
            weight[:n] *= fade(n)
        if i + 1 < len(bounds) and (n := end - bounds[i + 1][0]) > 0:  # fade out over the next one's head
            weight[-n:] *= fade(n).flip(0)
        for name, stream in fn(wav[None, :, start:end]).items():
            if stream is None:
                acc[name] = None
                continue
            if name not in acc:
                acc[name] = torch.zeros(1, length)
            if acc[name] is not None:
                acc[name][:, start:end] += stream[0].float().cpu() * weight
        norm[start:end] += weight
    return {name: None if a is None else a / norm for name, a in acc.items()}


def enhance_waveform(model: Generator | Enhancer, wav: torch.Tensor, chunk: int | None = None,
                     overlap: int = 0, noise: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """wav (1, T) -> (clean (1, T), noise (1, T) or None) on the CPU, at the model's sample rate,
    in chunks (overlap_add) on the model's frame grid. `model` is a USE-DDP generator or any
    Enhancer (load_enhancer(...).enhancer).

    `noise=False` runs the clean stream only (noise is None): for USE-DDP the shared decoder then
    decodes one stream instead of two, about half the cost (benchmarks/enhance_cpu.json), and the
    clean stream is the same, since every stream is decoded independently of the other. Level
    normalisation is the caller's business (normalise_level).
    """
    enhancer = as_enhancer(model)
    streams = ("clean", "noise") if noise else ("clean",)
    with torch.inference_mode():
        out = overlap_add(lambda x: enhancer(x, streams), wav, chunk, overlap, align=int(enhancer.hop_length))
    return out["clean"], out["noise"]
