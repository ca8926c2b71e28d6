"""Export a USE-DDP run to ONNX: `python -m usedddp.export ckpt=RUN output=FILE.onnx`.

The file holds the generator's float32 inference graph (weight norm folded;
models/components/dac_inference.py) from the padded waveform to the clean stream (and the
noise stream with `noise=true`), and, as ONNX metadata, what a caller needs: the sample rate,
the hop, the padding contract and the run's config. ONNX Runtime runs it with no usedddp and no
PyTorch:

    import numpy as np, onnxruntime as ort
    session = ort.InferenceSession("model.onnx")
    meta = session.get_modelmeta().custom_metadata_map          # sample_rate, hop_length, ...
    hop = int(meta["hop_length"]); T = len(wav)                 # wav: float32 mono at sample_rate
    padded = np.pad(wav, (0, (T // hop + 2) * hop - T))         # -> (ceil(T / hop) + 1) * hop samples
    clean = session.run(None, {"noisy": padded[None, None]})[0][0, 0, :T]

usedddp's own commands take the file back as they take a checkpoint (`usedddp.enhance
ckpt=FILE.onnx ...`; inference.load_enhancer), through OnnxEnhancer below. Levels, chunking
and cross-fades stay the caller's (usedddp.inference.enhance_waveform), as for the PyTorch model.

The export checks itself: ONNX Runtime's output on a test waveform against PyTorch's, reported
and stored in the metadata (tests/test_fast_inference.py asserts it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import warnings
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from usedddp.config import CONFIG_DIR, prepare_argv
from usedddp.inference import InferenceError, LoadedModel, inference_generator, load_generator
from usedddp.models.generator import Generator

log = logging.getLogger("usedddp.export")

OPSET = 17
FORMAT = "usedddp-onnx-1"


class PaddedStreams(nn.Module):
    """The generator on a waveform already padded to whole frames, with no shape arithmetic in
    the graph (ONNX tracing would freeze it at the example's length):
    noisy (B, 1, P), P = (ceil(T / hop) + 1) * hop -> each stream (B, 1, P - shortfall), to be cut to T."""

    def __init__(self, generator: Generator, streams: tuple[str, ...]):
        super().__init__()
        self.codec, self.branches, self.streams = generator.codec, generator.branches, streams

    def forward(self, noisy: Tensor) -> tuple[Tensor, ...]:
        z = self.codec.encoder(noisy[:, :, None, :].contiguous(memory_format=torch.channels_last))[:, :, 0, :]
        out = []
        for name in self.streams:
            z_q = self.branches[name](z).z_q
            out.append(self.codec.decoder(z_q[:, :, None, :].contiguous(memory_format=torch.channels_last))[:, :, 0, :])
        return tuple(out)


def padded_length(num_samples: int, hop: int) -> int:
    """(ceil(T / hop) + 1) * hop: the padding DACCodec.encode applies."""
    return (math.ceil(num_samples / hop) + 1) * hop


def _metadata_bytes(metadata: dict[str, str]) -> bytes:
    """ModelProto.metadata_props (field 14, repeated StringStringEntryProto {key = 1, value = 2}),
    serialised by hand: a protobuf message may be extended by appending fields, and the onnx
    package cannot be installed beside descript-audiotools' protobuf < 3.20 pin."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    def field(number: int, payload: bytes) -> bytes:
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    return b"".join(field(14, field(1, k.encode()) + field(2, v.encode())) for k, v in metadata.items())


@contextlib.contextmanager
def _without_onnx_package():
    """torch's TorchScript exporter imports the onnx package only to insert custom onnxscript
    functions, of which this graph has none; without the package (see _metadata_bytes) that
    step is skipped."""
    try:
        import onnx  # noqa: F401

        yield
        return
    except ImportError:
        pass
    from torch.onnx._internal.torchscript_exporter import onnx_proto_utils

    original = onnx_proto_utils._add_onnxscript_fn
    onnx_proto_utils._add_onnxscript_fn = lambda model_bytes, custom_opsets: model_bytes
    try:
        yield
    finally:
        onnx_proto_utils._add_onnxscript_fn = original


def export_onnx(loaded: LoadedModel, output: Path, noise: bool = False, check_seconds: float = 2.0) -> dict:
    """Write `loaded`'s generator (float32 inference graph) to `output` as ONNX with its metadata;
    returns the metadata, including ONNX Runtime's agreement with PyTorch on a test waveform."""
    generator = inference_generator(loaded.generator, "float32")
    from usedddp.models.components.dac_inference import InferenceDAC

    if not isinstance(generator.codec, InferenceDAC):
        raise InferenceError(f"{loaded.checkpoint}: ONNX export covers DAC-codec models (model=dac16k, tiny); "
                             f"this run's codec is {type(loaded.generator.codec).__name__}")
    streams = ("clean", "noise") if noise else ("clean",)
    graph = PaddedStreams(generator, streams).eval()
    hop, sr = generator.codec.hop_length, generator.sample_rate
    example = 0.05 * torch.randn(1, 1, padded_length(round(check_seconds * sr), hop), generator=torch.Generator().manual_seed(0))
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    try:
        with warnings.catch_warnings(), _without_onnx_package():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, (example,), str(partial), dynamo=False, opset_version=OPSET, input_names=["noisy"],
                              output_names=list(streams), dynamic_axes={"noisy": {0: "batch", 2: "samples"},
                                                                      **{s: {0: "batch", 2: "samples_out"} for s in streams}})
    except Exception as error:
        partial.unlink(missing_ok=True)
        raise InferenceError(f"{loaded.checkpoint}: ONNX export failed ({type(error).__name__}: {error})") from error
    metadata = {
        "format": FORMAT,
        "sample_rate": str(sr),
        "hop_length": str(hop),
        "streams": ",".join(streams),
        "input": "noisy (batch, 1, P) float32 at sample_rate, the waveform of T samples zero-padded at the end to "
                 "P = (ceil(T / hop_length) + 1) * hop_length; outputs (batch, 1, >= T): keep the first T samples",
        "checkpoint": str(loaded.checkpoint),
        "stage": str(loaded.stage),
        "config": json.dumps(OmegaConf.to_container(loaded.config, resolve=False)),
    }
    with open(partial, "ab") as f:
        f.write(_metadata_bytes(metadata))
    session = OnnxEnhancer.session(partial)
    check = onnx_agreement(graph, session, example, streams)
    metadata.update(check)
    with open(partial, "ab") as f:
        f.write(_metadata_bytes(check))
    os.replace(partial, output)
    return metadata


def onnx_agreement(graph: nn.Module, session, example: Tensor, streams: tuple[str, ...]) -> dict[str, str]:
    """The largest absolute difference and the SI-SDR (dB) of ONNX Runtime's streams against PyTorch's."""
    from usedddp.metrics import si_sdr

    with torch.inference_mode():
        reference = graph(example)
    outputs = session.run(None, {"noisy": example.numpy()})
    diff = max(float(np.abs(o - r.numpy()).max()) for o, r in zip(outputs, reference))
    agreement = min(si_sdr(torch.from_numpy(o)[0], r[0]) for o, r in zip(outputs, reference))
    return {"check_max_abs_diff": f"{diff:.3g}", "check_si_sdr_db": f"{agreement:.1f}", "check_samples": str(example.shape[-1])}


class OnnxEnhancer:
    """An exported model (export_onnx) as an Enhancer: pads each chunk to whole frames, runs it
    in ONNX Runtime on the CPU and cuts the streams back to the chunk's length."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.sess = self.session(self.path, threads)
        meta = self.sess.get_modelmeta().custom_metadata_map
        if meta.get("format") != FORMAT:
            raise InferenceError(f"{self.path}: not an ONNX file written by usedddp.export (no '{FORMAT}' metadata)")
        self.metadata = meta
        self.sample_rate, self.hop_length, self.nfe = int(meta["sample_rate"]), int(meta["hop_length"]), 0
        self.streams = tuple(meta["streams"].split(","))

    @staticmethod
    def session(path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:
            raise InferenceError(f"{path}: ONNX Runtime cannot load it ({type(error).__name__}: {error})") from None

    def __call__(self, x: Tensor, streams: tuple[str, ...] = ("clean", "noise")) -> dict[str, Tensor | None]:
        """x (1, 1, t) -> {"clean": (1, 1, t), "noise": (1, 1, t) or None (not exported or not asked)}."""
        if "noise" in streams and "noise" not in self.streams:
            raise InferenceError(f"{self.path}: exported without the noise stream; export again with noise=true")
        self.nfe += 1
        length = x.shape[-1]
        padded = torch.nn.functional.pad(x.float().cpu(), (0, padded_length(length, self.hop_length) - length))
        outputs = dict(zip(self.streams, self.sess.run(None, {"noisy": padded.numpy()})))
        return {name: torch.from_numpy(outputs[name][..., :length].copy()) if name in outputs and name in streams else None
                for name in ("clean", "noise")}


def load_onnx(path: Path) -> LoadedModel:
    """An exported file as inference.LoadedModel (the run's config from its metadata)."""
    enhancer = OnnxEnhancer(path)
    config = OmegaConf.create(json.loads(enhancer.metadata.get("config", "{}")))
    stage = enhancer.metadata.get("stage")
    return LoadedModel(enhancer, config, path, int(stage) if stage and stage.isdigit() else stage, None, "use_ddp",
                       f"USE-DDP stage {stage} (ONNX)")


# --------------------------------------------------------------------------------------------
# The command


def export(cfg: DictConfig) -> int:
    """The recipe behind `python -m usedddp.export`; returns the exit code."""
    for key in ("ckpt", "output"):
        if OmegaConf.is_missing(cfg, key) or cfg[key] in (None, ""):
            log.error("%s=... is required: python -m usedddp.export ckpt=RUN_OR_CKPT output=FILE.onnx", key)
            return 2
    output = Path(str(cfg.output))
    try:
        if output.suffix != ".onnx":
            raise InferenceError(f"output={output}: name the file FILE.onnx")
        if output.exists() and not cfg.overwrite:
            raise InferenceError(f"output={output} exists; choose another name or pass overwrite=true")
        loaded = load_generator(cfg.ckpt, "cpu")
        metadata = export_onnx(loaded, output, noise=bool(cfg.noise))
    except InferenceError as error:
        log.error("refused: %s", error)
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB; streams {metadata['streams']}, {metadata['sample_rate']} Hz, "
          f"hop {metadata['hop_length']}); ONNX Runtime vs PyTorch on {int(metadata['check_samples'])} samples: "
          f"max |diff| {metadata['check_max_abs_diff']}, SI-SDR {metadata['check_si_sdr_db']} dB")
    print(f"enhance with it: python -m usedddp.enhance ckpt={output} input=IN output=OUT")
    return 0


ConfigStore.instance().store(name="export", node=OmegaConf.load(CONFIG_DIR / "export.yaml"))


@hydra.main(version_base="1.3", config_path=None, config_name="export")
def _main(cfg: DictConfig) -> None:
    code = export(cfg)
    if code:
        sys.exit(code)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    prepare_argv()
    _main()


if __name__ == "__main__":
    main()
