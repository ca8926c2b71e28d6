"""Enhance audio files with a trained model: `python -m usedddp.enhance ckpt=RUN input=IN output=OUT`.

Walking files and the command; the model and the chunked enhancement are usedddp.inference:

    model = load_enhancer("outputs/demo/2026-...", device="cpu")   # any method's run or checkpoint
    report = enhance_paths(model.enhancer, "noisy/", "enhanced/")
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from usedddp.audio import AUDIO_EXTENSIONS, AudioFileError, audio_info, load_audio, resample, save_audio
from usedddp.config import CONFIG_DIR, prepare_argv
from usedddp.inference import Enhancer, InferenceError, as_enhancer, enhance_waveform, load_enhancer, normalise_level

log = logging.getLogger("usedddp.enhance")

OUTPUT_RATES = ("model", "input")


class EnhanceError(InferenceError):
    """The whole command cannot run (unsafe output folder, no inputs, bad options); a bad
    checkpoint or device is an InferenceError, its base."""


@dataclass
class EnhanceReport:
    total: int = 0
    written: list[tuple[Path, list[Path]]] = field(default_factory=list)  # (input, [clean, noise?])
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (input, reason)
    audio_seconds: float = 0.0  # of the enhanced files
    seconds: float = 0.0  # wall time of enhancing them (reading and writing included)
    nfe: int = 0  # network evaluations spent on them

    @property
    def cost(self) -> dict:
        """Real-time factor and network evaluations per second of audio over the enhanced files."""
        audio = self.audio_seconds or float("nan")
        return {"rtf": self.seconds / audio, "nfe_per_second": self.nfe / audio, "audio_seconds": self.audio_seconds,
                "seconds": self.seconds, "nfe": self.nfe}

    @property
    def summary(self) -> str:
        return f"enhanced {len(self.written)} of {self.total} files ({len(self.failed)} failed)"


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


def enhance_file(model: torch.nn.Module | Enhancer, source: Path, targets: list[Path], *, chunk_seconds: float,
                 overlap_seconds: float, output_sr: str = "model", overwrite: bool = False) -> float:
    """Enhance one file into targets ([clean] or [clean, noise]); returns the real-time factor.
    Raises on any problem with this file (AudioFileError, OSError, ...)."""
    enhancer = as_enhancer(model)
    sr, hop = enhancer.sample_rate, enhancer.hop_length
    if not overwrite:
        for target in targets:
            if target.exists():
                raise FileExistsError(f"{target}: output already exists (pass overwrite=true to replace it)")
    file_frames, file_sr, _ = audio_info(source)
    started = time.perf_counter()
    wav = load_audio(source, sr)
    if wav.shape[-1] < hop:
        raise AudioFileError(source, f"too short: {wav.shape[-1]} samples at {sr} Hz, less than one model frame ({hop} samples)")
    wav, gain = normalise_level(wav)  # undone on the outputs
    clean, noise = enhance_waveform(enhancer, wav, round(chunk_seconds * sr), round(overlap_seconds * sr),
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


def enhance_paths(model: torch.nn.Module | Enhancer, input_path: str | Path, output: str | Path, *, noise: bool = False,
                  output_sr: str = "model", chunk_seconds: float = 10.0, overlap_seconds: float = 1.0,
                  overwrite: bool = False, progress: bool = True) -> EnhanceReport:
    """Enhance every audio file under input_path into the same relative path under output.

    Whole-command problems (unsafe output folder, no inputs, bad options) raise EnhanceError
    before anything is written; a problem with one file is recorded in the report and the
    other files are processed.
    """
    if output_sr not in OUTPUT_RATES:
        raise EnhanceError(f"output_sr={output_sr}: use one of {OUTPUT_RATES}")
    enhancer = as_enhancer(model)
    hop, sr = enhancer.hop_length, enhancer.sample_rate
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
            _enhance_one(enhancer, source, root, output, report, claimed, noise=noise, output_sr=output_sr,
                         chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds, overwrite=overwrite)
    return report


def _enhance_one(enhancer: Enhancer, source: Path, root: Path, output: Path, report: EnhanceReport, claimed: dict, *,
                 noise: bool, output_sr: str, chunk_seconds: float, overlap_seconds: float, overwrite: bool) -> None:
    targets = output_paths(source, root, output, noise)
    try:
        clash = next((claimed[t.resolve()] for t in targets if t.resolve() in claimed), None)
        if clash is not None:
            raise FileExistsError(f"its output would also be written for {clash}")
        for t in targets:
            claimed[t.resolve()] = source
        nfe_before, started = enhancer.nfe, time.perf_counter()
        rtf = enhance_file(enhancer, source, targets, chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds,
                           output_sr=output_sr, overwrite=overwrite)
    except Exception as error:  # one file's problem: report it and go on
        reason = str(error.problem) if isinstance(error, AudioFileError) and error.problem else str(error)
        report.failed.append((source, reason))
        log.error("FAILED %s: %s", source, reason)
        return
    report.written.append((source, targets))
    report.seconds += time.perf_counter() - started
    frames, rate, _ = audio_info(source)
    report.audio_seconds += frames / rate
    report.nfe += enhancer.nfe - nfe_before
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
        model = load_enhancer(cfg.ckpt, cfg.device, _method_overrides(cfg), progress=True, engine=str(cfg.get("engine", "auto")))
        if cfg.noise and "noise" not in getattr(model.enhancer, "streams", ("clean", "noise")):
            raise InferenceError(f"{cfg.ckpt}: exported without the noise stream; export again with noise=true, or drop noise=true")
        report = enhance_paths(model.enhancer, cfg.input, cfg.output, noise=bool(cfg.noise), output_sr=str(cfg.output_sr),
                               chunk_seconds=float(cfg.chunk_seconds), overlap_seconds=float(cfg.overlap_seconds),
                               overwrite=bool(cfg.overwrite))
    except InferenceError as error:
        log.error("refused: %s", error)
        print(f"error: {error}", file=sys.stderr)
        return 2
    for source, reason in report.failed:
        print(f"failed: {source}: {reason}")
    log.info(report.summary)
    print(f"{report.summary}; output: {cfg.output}")
    if report.written:
        cost = report.cost
        print(f"{model.label}: real-time factor {cost['rtf']:.3f}, {cost['nfe_per_second']:.1f} network evaluations "
              f"per second of audio ({cost['audio_seconds']:.1f} s of audio)")
    return 1 if report.failed else 0


def _method_overrides(cfg: DictConfig) -> dict:
    """The command line's method.* options (null: the run's own)."""
    node = cfg.get("method")
    return {} if node is None else {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if v is not None}


# configs/enhance.yaml is served from Hydra's ConfigStore rather than from the configs folder:
# there, `noise=true` would be read as a choice in the training configs' `noise` group.
ConfigStore.instance().store(name="enhance", node=OmegaConf.load(CONFIG_DIR / "enhance.yaml"))


@hydra.main(version_base="1.3", config_path=None, config_name="enhance")
def _main(cfg: DictConfig) -> None:
    code = enhance(cfg)
    if code:
        sys.exit(code)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    prepare_argv()  # a checkpoint path with '=' in it (older runs' step=N.ckpt) is taken as typed
    _main()


if __name__ == "__main__":
    main()
