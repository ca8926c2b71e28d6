"""The fast enhancement path: DAC's inference graph (models/components/dac_inference.py), the
enhance engines (usedddp.inference.ENGINES) and the ONNX export (usedddp.export). Equivalence,
not speed: scripts/benchmark_enhance.py measures that."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from test_enhance import _make_run
from usedddp.inference import ENGINES, InferenceError, enhance_waveform, inference_generator, load_enhancer, load_generator
from usedddp.metrics import si_sdr
from usedddp.models.components.dac_codec import DACCodec
from usedddp.models.components.dac_inference import InferenceDAC, PolyphaseConvTranspose, fold_weight_norm

SR = 16000


def _codec(seed: int = 0) -> DACCodec:
    """model/codec=dac_tiny's shape (DAC 16 kHz's rates), random weights, snake alphas perturbed
    (DAC starts them all at 1, which would hide a per-channel mix-up)."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        codec = DACCodec(encoder_dim=8, latent_dim=64, decoder_dim=64).eval()
    with torch.no_grad():
        for name, p in codec.named_parameters():
            if name.endswith("alpha"):
                p.uniform_(0.5, 2.0)
    return codec


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max().detach() / b.abs().max().detach())


@pytest.mark.parametrize("stride", [2, 4, 5, 8])
def test_polyphase_transposed_convolution_equals_conv_transpose(stride):
    torch.manual_seed(stride)
    conv = nn.ConvTranspose1d(6, 5, 2 * stride, stride=stride, padding=(stride + 1) // 2)
    x = torch.randn(2, 6, 13)
    out = PolyphaseConvTranspose(conv)(x[:, :, None, :])[:, :, 0, :]
    ref = conv(x)
    assert out.shape == ref.shape
    assert _max_rel(out, ref) < 1e-6


def test_fold_weight_norm_keeps_the_function():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conv = torch.nn.utils.weight_norm(nn.Conv1d(4, 3, 5, padding=2))
    with torch.no_grad():
        conv.weight_g.mul_(torch.rand_like(conv.weight_g) + 0.5)
    x = torch.randn(1, 4, 20)
    ref = conv(x)
    fold_weight_norm(conv)
    assert not hasattr(conv, "weight_g") and isinstance(conv.weight, nn.Parameter)
    assert _max_rel(conv(x), ref) < 1e-6


def test_float32_graph_equals_training_graph_and_leaves_it_alone():
    codec = _codec()
    wav = 0.1 * torch.randn(2, 1, 3 * SR + 77)
    with torch.inference_mode():
        z, before = codec.encode(wav), {k: v.clone() for k, v in codec.state_dict().items()}
        ref = codec.decode(z, wav.shape[-1])
        fast = InferenceDAC(codec)
        z_fast = fast.encode(wav)
        out = fast.decode(z, wav.shape[-1])
        assert z_fast.shape == z.shape and out.shape == ref.shape
        assert _max_rel(z_fast, z) < 1e-5 and _max_rel(out, ref) < 1e-5
        # The training codec still has its weight norm and computes as before.
        assert all(torch.equal(v, codec.state_dict()[k]) for k, v in before.items())
        assert torch.equal(codec.decode(z, wav.shape[-1]), ref)


def test_bfloat16_decoder_is_close_but_not_exact():
    codec = _codec()
    z = torch.randn(1, 64, 60)
    with torch.inference_mode():
        ref = codec.decode(z, 60 * 320 - 8)
        out = InferenceDAC(codec, torch.float32, torch.bfloat16).decode(z, 60 * 320 - 8)
    agreement = si_sdr(out[0], ref[0])
    assert 25 < agreement < 80  # bfloat16 rounding, measured ~35 dB on this tiny decoder (52 dB on dac16k)


# --------------------------------------------------------------------------------------------
# Generator level: engines and export, from a run's checkpoint


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny DAC run whose branches are not the identity (zero-initialised output projections
    would pass the encoder latent through)."""
    run = _make_run(tmp_path_factory.mktemp("run"))
    ckpt = run / "stage3" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    torch.manual_seed(1)
    for key, value in state["state_dict"].items():
        if ".proj_out." in key or key.endswith(".alpha"):
            state["state_dict"][key] = value + 0.05 * torch.randn_like(value)
    torch.save(state, ckpt)
    return run


@pytest.fixture(scope="module")
def noisy():
    torch.manual_seed(3)
    t = torch.arange(int(2.7 * SR)) / SR
    return (0.1 * torch.sin(2 * np.pi * 220 * t) * (1 + torch.sin(2 * np.pi * 3 * t)) + 0.02 * torch.randn_like(t))[None]


def test_float32_engine_enhances_as_the_reference(run_dir, noisy):
    reference = load_generator(run_dir, engine="reference").generator
    fast = inference_generator(reference, "float32")
    assert isinstance(fast.codec, InferenceDAC) and fast.branches["clean"] is reference.branches["clean"]
    for noise in (False, True):
        ref_clean, ref_noise = enhance_waveform(reference, noisy, SR, SR // 10, noise=noise)
        clean, noise_out = enhance_waveform(fast, noisy, SR, SR // 10, noise=noise)
        assert _max_rel(clean, ref_clean) < 1e-5
        if noise:
            assert _max_rel(noise_out, ref_noise) < 1e-5


def test_engines_by_name(run_dir, noisy):
    reference, _ = enhance_waveform(load_enhancer(run_dir, engine="reference").enhancer, noisy, SR, SR // 10, noise=False)
    agreement = {}
    for engine in ENGINES:
        clean, _ = enhance_waveform(load_enhancer(run_dir, engine=engine).enhancer, noisy, SR, SR // 10, noise=False)
        assert clean.shape == reference.shape and torch.isfinite(clean).all()
        agreement[engine] = si_sdr(clean, reference)
    assert agreement["float32"] > 80 and agreement["bf16-decoder"] > 25
    # A bfloat16 encoder moves latents across quantizer boundaries: codes flip, the output
    # departs from the reference by far more than rounding (14 dB here). Why it is not a default.
    assert agreement["bf16"] < agreement["bf16-decoder"]
    exact = load_enhancer(run_dir, engine="exact").generator
    assert isinstance(exact.codec, InferenceDAC) and exact.codec.decoder_dtype == torch.float32
    auto = load_enhancer(run_dir).generator  # enhance's default: an inference graph on any CPU
    assert isinstance(auto.codec, InferenceDAC)
    assert auto.codec.decoder_dtype == (torch.bfloat16 if torch.cpu._is_amx_tile_supported() else torch.float32)
    with pytest.raises(InferenceError, match="engine=fastest"):
        load_enhancer(run_dir, engine="fastest")


def test_export_matches_pytorch_and_enhance_takes_it_back(tmp_path, run_dir, noisy):
    """ONNX Runtime on the exported file (lengths other than the export's example, both streams)
    against PyTorch's reference path; the exported file is a `ckpt=` of the enhance command."""
    onnx = tmp_path / "model.onnx"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "usedddp.export", f"ckpt={run_dir}", f"output={onnx}", "noise=true", f"hydra.run.dir={tmp_path / 'h'}"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert result.returncode == 0, result.stdout
    assert "SI-SDR" in result.stdout and onnx.is_file() and not (tmp_path / "model.onnx.partial").exists()

    loaded = load_enhancer(onnx)
    assert loaded.enhancer.sample_rate == SR and loaded.enhancer.hop_length == 320
    assert float(loaded.enhancer.metadata["check_max_abs_diff"]) < 1e-4
    assert loaded.config.model.codec._target_.endswith("DACCodec")  # the run's config travels with it
    reference = load_generator(run_dir, engine="reference").generator
    for length in (noisy.shape[-1], 4567):
        wav = noisy[:, :length]
        ref_clean, ref_noise = enhance_waveform(reference, wav, SR, SR // 10)
        clean, noise = enhance_waveform(loaded.enhancer, wav, SR, SR // 10)
        assert clean.shape == ref_clean.shape
        assert _max_rel(clean, ref_clean) < 1e-4 and _max_rel(noise, ref_noise) < 1e-4

    # Refused again without overwrite=true: nothing the user owns is replaced.
    before = onnx.stat().st_mtime_ns
    again = subprocess.run(cmd[:-2] + [f"hydra.run.dir={tmp_path / 'h2'}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=300)
    assert again.returncode == 2 and "exists" in again.stdout and onnx.stat().st_mtime_ns == before

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    sf.write(inp / "a.wav", noisy[0].numpy(), SR)
    result = subprocess.run([sys.executable, "-m", "usedddp.enhance", f"ckpt={onnx}", f"input={inp}", f"output={out}",
                             f"hydra.run.dir={tmp_path / 'h3'}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=300)
    assert result.returncode == 0, result.stdout
    from usedddp.enhance import enhance_paths

    pytorch_out = tmp_path / "out_pt"
    enhance_paths(load_generator(run_dir, engine="reference").generator, inp, pytorch_out)
    a, b = sf.read(out / "a.wav")[0], sf.read(pytorch_out / "a.wav")[0]
    assert a.shape == b.shape and np.abs(a - b).max() < 1e-3  # 16-bit files: within a few LSB


def test_export_refuses_a_codec_without_an_onnx_graph(tmp_path):
    """model=tiny_stft's STFT codec is not exported; the refusal names the codec."""
    from conftest import compose_train
    from omegaconf import OmegaConf
    from usedddp.export import export_onnx
    from usedddp.models.build import build_module

    cfg = compose_train(["model=tiny_stft", "model.branch.dim=32", "model.branch.depth=1", "model.discriminator.fft_sizes=[256]",
                         "model.discriminator.channels=4", f"paths.output_dir={tmp_path}"])
    OmegaConf.set_struct(cfg, False)
    cfg.model = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = build_module(cfg.model)
    ckpt = tmp_path / "run" / "stage3" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": module.state_dict(), "usedddp": {"stage": 3, "config": OmegaConf.to_container(cfg)}}, ckpt)
    with pytest.raises(InferenceError, match="STFTCodec"):
        export_onnx(load_generator(ckpt), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
