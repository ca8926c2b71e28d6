"""Enhance audio files with a trained model: `python -m usedddp.enhance ckpt=RUN input=IN output=OUT`.

The core is plain functions, usable from a notebook:

    generator, cfg = load_enhancer("outputs/demo/2026-...", device="cpu")
    clean, noise = enhance_waveform(generator, wav, chunk=160000, overlap=16000)   # wav (1, T)
    report = enhance_paths(generator, "noisy/", "enhanced/")
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from usedddp.audio import AUDIO_EXTENSIONS, AudioFileError, audio_info, load_audio, resample, save_audio
from usedddp.checkpoints import find_checkpoint, load_checkpoint
from usedddp.data.datasets import VALIDATION_LEVEL_DB, level_gain
from usedddp.train import CONFIG_DIR  # also registers the ${usedddp_demo_root:} resolver

log = logging.getLogger("usedddp.enhance")

OUTPUT_RATES = ("model", "input")


class EnhanceError(ValueError):
    """The whole command cannot run (bad checkpoint, unsafe output folder, bad options)."""


@dataclass
class EnhanceReport:
    total: int = 0
    written: list[tuple[Path, list[Path]]] = field(default_factory=list)  # (input, [clean, noise?])
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (input, reason)

    @property
    def summary(self) -> str:
        return f"enhanced {len(self.written)} of {self.total} files ({len(self.failed)} failed)"


# --------------------------------------------------------------------------------------------
# The model


def find_run(ckpt: str | Path) -> tuple[Path, Path]:
    """(checkpoint file, run directory) for a run directory or a <run>/stage<k>/checkpoints/*.ckpt."""
    path = Path(ckpt)
    try:
        checkpoint = find_checkpoint(path)
    except FileNotFoundError as error:
        raise EnhanceError(str(error)) from None
    parents = checkpoint.resolve().parents
    run_dir = path if path.is_dir() else parents[min(2, len(parents) - 1)]
    config = run_dir / ".hydra" / "config.yaml"
    if not config.is_file():
        raise EnhanceError(f"{checkpoint}: no training run config next to this checkpoint (expected {config}; "
                           "the model is rebuilt from the run's saved config, so pass a checkpoint inside a "
                           "usedddp run directory: <run>/stage<k>/checkpoints/*.ckpt)")
    return checkpoint, run_dir


def check_device(device: str | torch.device) -> torch.device:
    """A torch device that exists here, or an EnhanceError saying why not."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise EnhanceError(f"device={device}: not a torch device ({error}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EnhanceError(f"device={device}: no CUDA device is available here (torch {torch.__version__}, "
                               f"built for CUDA {torch.version.cuda}); use device=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EnhanceError(f"device={device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise EnhanceError(f"device={device}: use cpu, cuda or cuda:N")
    return device


def load_enhancer(ckpt: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, DictConfig]:
    """(generator in eval mode on `device`, the run's config) from a run directory or checkpoint.

    The model is rebuilt from the run's saved .hydra/config.yaml (never from pickled objects) and
    its weights are loaded from the checkpoint with torch.load(weights_only=True), strictly.
    """
    device = check_device(device)
    checkpoint, run_dir = find_run(ckpt)
    config_path = run_dir / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(config_path)
    if "model" not in cfg:
        raise EnhanceError(f"{config_path}: no `model` node (not a usedddp training config)")
    OmegaConf.set_struct(cfg, False)
    if "codec" in cfg.model:
        cfg.model.codec.weights = None  # the codec's weights come from the checkpoint
    codec_log = logging.getLogger("usedddp.models.components.codec")
    previous_level = codec_log.level
    codec_log.setLevel(logging.ERROR)  # its "no DAC weights given" warning does not apply here
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*weight_norm.*is deprecated")
            module = instantiate(cfg.model)
    except Exception as error:
        raise EnhanceError(f"{config_path}: cannot build the model from this config ({type(error).__name__}: {error})") from error
    finally:
        codec_log.setLevel(previous_level)
    try:
        state = load_checkpoint(checkpoint)
    except ValueError as error:
        raise EnhanceError(str(error)) from error
    if not isinstance(state, dict) or "state_dict" not in state:
        raise EnhanceError(f"{checkpoint}: not a usedddp training checkpoint (no 'state_dict')")
    try:
        module.load_state_dict(state["state_dict"], strict=True)
    except RuntimeError as error:
        raise EnhanceError(f"{checkpoint}: weights do not match the model in {config_path}: {error}") from error
    generator = module.generator.to(device).eval()
    log.info("model: %s (stage %s, %d Hz, %.1f M generator parameters)", checkpoint,
             state.get("usedddp", {}).get("stage", "?"), generator.sample_rate,
             sum(p.numel() for p in generator.parameters()) / 1e6)
    return generator, cfg


# --------------------------------------------------------------------------------------------
# One waveform


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


def _fade(n: int) -> torch.Tensor:
    """A strictly positive raised-cosine fade-in of n samples (its reverse fades out; they sum to 1)."""
    return torch.sin(0.5 * math.pi * (torch.arange(n, dtype=torch.float32) + 0.5) / n) ** 2


def enhance_waveform(generator: torch.nn.Module, wav: torch.Tensor, chunk: int | None = None,
                     overlap: int = 0, noise: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """wav (1, T) -> (clean (1, T), noise (1, T) or None) on the CPU, at the generator's sample rate.

    `noise=False` runs the clean branch only (noise is None): the shared decoder then decodes one
    stream instead of two, about half the cost (benchmarks/enhance_cpu.json), and the clean
    stream is the same, since every stream is decoded independently of the other.

    With `chunk` (samples) the waveform is enhanced in chunks of about that length overlapping by
    at least `overlap` samples and cross-faded by overlap-add (complementary raised-cosine fades,
    normalised by the window sum), so memory does not grow with the file; chunks start on the
    codec's frame grid. A waveform no longer than one chunk (or chunk=None) is enhanced whole.
    Level normalisation is the caller's business.
    """
    if wav.ndim != 2 or wav.shape[0] != 1:
        raise ValueError(f"expected a mono waveform of shape (1, T), got {tuple(wav.shape)}")
    length = wav.shape[-1]
    align = int(getattr(getattr(generator, "codec", None), "hop_length", 1))
    chunk = length if chunk is None else int(chunk)
    overlap = int(overlap)
    if not 0 <= overlap < chunk or chunk < align:
        raise ValueError(f"need 0 <= overlap < chunk and chunk >= {align} (one model frame), got overlap={overlap}, chunk={chunk}")
    device = next(generator.parameters()).device
    bounds = chunk_bounds(length, chunk, overlap, align)

    def run(x: torch.Tensor):
        return generator(x.to(device)) if noise else generator(x.to(device), streams=("clean",))

    with torch.inference_mode():
        if len(bounds) == 1:
            out = run(wav[None])
            return out.clean[0].float().cpu(), None if out.noise is None else out.noise[0].float().cpu()
        acc = {"clean": torch.zeros(1, length), "noise": torch.zeros(1, length)}
        norm = torch.zeros(length)
        for i, (start, end) in enumerate(bounds):
            weight = torch.ones(end - start)
            if i > 0 and (n := bounds[i - 1][1] - start) > 0:  # fade in over the previous chunk's tail
                weight[:n] *= _fade(n)
            if i + 1 < len(bounds) and (n := end - bounds[i + 1][0]) > 0:  # fade out over the next one's head
                weight[-n:] *= _fade(n).flip(0)
            out = run(wav[None, :, start:end])
            for name in acc:
                stream = getattr(out, name)
                if stream is None:
                    acc[name] = None
                elif acc[name] is not None:
                    acc[name][:, start:end] += stream[0].float().cpu() * weight
            norm[start:end] += weight
    return acc["clean"] / norm, None if acc["noise"] is None else acc["noise"] / norm


# --------------------------------------------------------------------------------------------
# Files


def list_inputs(input_path: str | Path) -> tuple[Path, list[Path]]:
    """(root, audio paths) for a file or a folder (searched recursively). Paths with an audio
    extension that are not files (e.g. a folder named x.wav) are listed too, to be reported."""
    path = Path(input_path)
    if not path.exists():
        raise EnhanceError(f"{path}: input does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
        if not files:
            raise EnhanceError(f"{path}: no audio files found (looked recursively for {', '.join(AUDIO_EXTENSIONS)})")
        return path, files
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        raise EnhanceError(f"{path}: not an audio file ({', '.join(AUDIO_EXTENSIONS)})")
    return path.parent, [path]


def output_paths(source: Path, root: Path, output: Path, noise: bool) -> list[Path]:
    target = output / source.relative_to(root)
    return [target] + ([target.with_name(f"{target.stem}_noise{target.suffix}")] if noise else [])


def check_output(input_path: str | Path, output: str | Path, root: Path, files: list[Path], noise: bool) -> None:
    """Refuse an output folder that is the input folder or inside it, or any output file that
    would be an input file."""
    source, out = Path(input_path).resolve(), Path(output).resolve()
    if source.is_dir() and (out == source or source in out.parents):
        raise EnhanceError(f"output={output} is the input folder or inside it ({input_path}): choose another output folder")
    inputs = {p.resolve() for p in files}
    for f in files:
        for target in output_paths(f, root, Path(output), noise):
            if target.resolve() in inputs:
                raise EnhanceError(f"{target}: this output file would overwrite an input file: choose another output folder")


def enhance_file(generator: torch.nn.Module, source: Path, targets: list[Path], *, chunk_seconds: float,
                 overlap_seconds: float, output_sr: str = "model", overwrite: bool = False) -> float:
    """Enhance one file into targets ([clean] or [clean, noise]); returns the real-time factor.
    Raises on any problem with this file (AudioFileError, OSError, ...)."""
    sr = generator.sample_rate
    hop = getattr(generator.codec, "hop_length", 1)
    if not overwrite:
        for target in targets:
            if target.exists():
                raise FileExistsError(f"{target}: output already exists (pass overwrite=true to replace it)")
    file_frames, file_sr, _ = audio_info(source)
    started = time.perf_counter()
    wav = load_audio(source, sr)
    if wav.shape[-1] < hop:
        raise AudioFileError(source, f"too short: {wav.shape[-1]} samples at {sr} Hz, less than one model frame ({hop} samples)")
    # The level validation uses: the whole file at -25 dBFS RMS; the gain is undone on the outputs.
    gain = level_gain(wav, VALIDATION_LEVEL_DB)
    clean, noise = enhance_waveform(generator, wav * gain, round(chunk_seconds * sr), round(overlap_seconds * sr),
                                    noise=len(targets) > 1)
    streams = [clean, noise][:len(targets)]
    if any(s is None for s in streams):
        raise RuntimeError("the model has no noise stream")
    rate = sr
    if output_sr == "input" and file_sr != sr:
        streams = [_fit(resample(s, sr, file_sr), file_frames) for s in streams]
        rate = file_sr
    for target, stream in zip(targets, streams):
        try:
            save_audio(target, stream / gain, rate, overwrite=overwrite)
        except (RuntimeError, OSError) as error:  # soundfile reports some write failures as RuntimeError
            raise OSError(f"cannot write {target} ({type(error).__name__}: {error})") from error
    return (time.perf_counter() - started) / (wav.shape[-1] / sr)


def _fit(wav: torch.Tensor, length: int) -> torch.Tensor:
    if wav.shape[-1] >= length:
        return wav[..., :length]
    return torch.nn.functional.pad(wav, (0, length - wav.shape[-1]))


def enhance_paths(generator: torch.nn.Module, input_path: str | Path, output: str | Path, *, noise: bool = False,
                  output_sr: str = "model", chunk_seconds: float = 10.0, overlap_seconds: float = 1.0,
                  overwrite: bool = False, progress: bool = True) -> EnhanceReport:
    """Enhance every audio file under input_path into the same relative path under output.

    Whole-command problems (unsafe output folder, no inputs, bad options) raise EnhanceError
    before anything is written; a problem with one file is recorded in the report and the
    other files are processed.
    """
    if output_sr not in OUTPUT_RATES:
        raise EnhanceError(f"output_sr={output_sr}: use one of {OUTPUT_RATES}")
    hop = getattr(generator.codec, "hop_length", 1)
    sr = generator.sample_rate
    if chunk_seconds * sr < 2 * hop or not 0 <= overlap_seconds < chunk_seconds:
        raise EnhanceError(f"chunk_seconds={chunk_seconds}, overlap_seconds={overlap_seconds}: need "
                           f"0 <= overlap < chunk and a chunk of at least two model frames ({2 * hop / sr:.3f} s)")
    root, files = list_inputs(input_path)
    output = Path(output)
    check_output(input_path, output, root, files, noise)

    report = EnhanceReport(total=len(files))
    claimed: dict[Path, Path] = {}
    with logging_redirect_tqdm():
        for source in tqdm(files, desc="enhance", unit="file", dynamic_ncols=True, disable=not progress):
            _enhance_one(generator, source, root, output, report, claimed, noise=noise, output_sr=output_sr,
                         chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds, overwrite=overwrite)
    return report


def _enhance_one(generator, source: Path, root: Path, output: Path, report: EnhanceReport, claimed: dict, *,
                 noise: bool, output_sr: str, chunk_seconds: float, overlap_seconds: float, overwrite: bool) -> None:
    targets = output_paths(source, root, output, noise)
    try:
        clash = next((claimed[t.resolve()] for t in targets if t.resolve() in claimed), None)
        if clash is not None:
            raise FileExistsError(f"its output would also be written for {clash}")
        for t in targets:
            claimed[t.resolve()] = source
        rtf = enhance_file(generator, source, targets, chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds,
                           output_sr=output_sr, overwrite=overwrite)
    except Exception as error:  # one file's problem: report it and go on
        reason = str(error.problem) if isinstance(error, AudioFileError) and error.problem else str(error)
        report.failed.append((source, reason))
        log.error("FAILED %s: %s", source, reason)
        return
    report.written.append((source, targets))
    log.info("%s -> %s (real-time factor %.3f)", source, targets[0], rtf)


# --------------------------------------------------------------------------------------------
# The command


def enhance(cfg: DictConfig) -> int:
    """The recipe behind `python -m usedddp.enhance`; returns the exit code."""
    for key in ("ckpt", "input", "output"):
        if OmegaConf.is_missing(cfg, key) or cfg[key] in (None, ""):
            log.error("%s=... is required: python -m usedddp.enhance ckpt=RUN_OR_CKPT input=FILE_OR_DIR output=DIR", key)
            return 2
    try:
        # Cheap checks first, so that a refused command loads no model.
        root, files = list_inputs(cfg.input)
        check_output(cfg.input, cfg.output, root, files, bool(cfg.noise))
        generator, _ = load_enhancer(cfg.ckpt, cfg.device)
        report = enhance_paths(generator, cfg.input, cfg.output, noise=bool(cfg.noise), output_sr=str(cfg.output_sr),
                               chunk_seconds=float(cfg.chunk_seconds), overlap_seconds=float(cfg.overlap_seconds),
                               overwrite=bool(cfg.overwrite))
    except EnhanceError as error:
        log.error("refused: %s", error)
        print(f"error: {error}", file=sys.stderr)
        return 2
    for source, reason in report.failed:
        print(f"failed: {source}: {reason}")
    log.info(report.summary)
    print(f"{report.summary}; output: {cfg.output}")
    return 1 if report.failed else 0


# configs/enhance.yaml is served from Hydra's ConfigStore rather than from the configs folder:
# there, `noise=true` would be read as a choice in the training configs' `noise` group.
ConfigStore.instance().store(name="enhance", node=OmegaConf.load(CONFIG_DIR / "enhance.yaml"))


@hydra.main(version_base="1.3", config_path=None, config_name="enhance")
def main(cfg: DictConfig) -> None:
    code = enhance(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
