"""Invariants of the DAC codec adapter: exact lengths, the DAC release format, and refusing
files that are not DAC releases (without executing their pickles)."""

import os
import pickle
import shlex
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import usedddp.config  # CONFIG_DIR; registers the ${usedddp_demo_root:} resolver
from usedddp.models.build import build_module
from usedddp.models.components.branch import RoFormerBranch
from usedddp.models.components.dac_codec import DACCodec, load_dac_release, load_dac_weights

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import dac

TINY = dict(sample_rate=16000, encoder_dim=8, encoder_rates=[2, 4, 5, 8], latent_dim=64, decoder_dim=64, decoder_rates=[8, 5, 4, 2])
# The official 16 kHz DAC release: 74 M parameters.
DAC16K = dict(encoder_dim=64, encoder_rates=[2, 4, 5, 8], decoder_dim=1536, decoder_rates=[8, 5, 4, 2],
              n_codebooks=12, codebook_size=1024, codebook_dim=8, sample_rate=16000)


def tiny_codec(**kwargs):
    torch.manual_seed(0)
    return DACCodec(**{**TINY, **kwargs})


def tiny_codec_from(path, **kwargs) -> DACCodec:
    """tiny_codec(**kwargs) started from the release file at path (load_dac_weights, the codec part)."""
    codec = tiny_codec(**kwargs)
    load_dac_weights(SimpleNamespace(codec=codec, branches={}), path)
    return codec


# -- lengths -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def codec():
    return tiny_codec().eval()


@pytest.mark.parametrize("length", [1, 319, 320, 3200, 4000, 4321, 16000])
def test_encode_decode_returns_input_length(codec, length):
    assert codec.hop_length == 320
    wav = 0.1 * torch.randn(2, 1, length, generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        z = codec.encode(wav)
        assert z.shape == (2, codec.latent_dim, codec.n_frames(length))
        out = codec.decode(z, length)
    assert out.shape == wav.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("length", [3200, 16000])
def test_the_extra_frame_is_needed_at_hop_multiples(codec, length):
    # DAC's decoder returns a few samples fewer than frames * hop: without the extra frame that
    # encode() pads, a hop-multiple length could not be decoded in full.
    with torch.no_grad():
        z = codec.encode(torch.zeros(1, 1, length))
        assert codec.decoder(z[..., :-1]).shape[-1] < length
        with pytest.raises(RuntimeError, match="pads too little"):
            codec.decode(z[..., :-1], length)


def test_batch_items_are_coded_independently(codec):
    # Items are encoded and decoded independently of their batch neighbours.
    wav = 0.1 * torch.randn(2, 1, 4000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        both = codec.decode(codec.encode(wav), 4000)
        first = codec.decode(codec.encode(wav[:1]), 4000)
    torch.testing.assert_close(first, both[:1], atol=1e-5, rtol=1e-5)


# -- the DAC release format: tiny ---------------------------------------------------------------


def save_release(path, state_dict, **kwargs):
    torch.save({"state_dict": state_dict, "metadata": {"kwargs": kwargs}}, path)
    return path


def tiny_release(path, sample_rate=16000):
    source = tiny_codec()
    torch.manual_seed(123)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.01 * torch.randn_like(p))
    kwargs = {**TINY, "sample_rate": np.int64(sample_rate), "encoder_dim": np.int64(8), "latent_dim": np.int64(64)}
    return save_release(path, source.state_dict(), **kwargs), source


def test_tiny_release_round_trip(tmp_path):
    path, source = tiny_release(tmp_path / "weights.pth")
    loaded = tiny_codec_from(path)
    fresh = tiny_codec()
    own = loaded.state_dict()
    assert set(own) == set(source.state_dict())
    for key, value in source.state_dict().items():
        assert torch.equal(own[key], value), key
    assert any(not torch.equal(fresh.state_dict()[k], v) for k, v in own.items())  # really loaded
    # The file has no quantizer: no codebook is copied into a branch.
    branch = RoFormerBranch(64, dim=16, depth=1, heads=2, n_codebooks=2, codebook_size=16)
    before = {k: v.clone() for k, v in branch.state_dict().items()}
    loaded_counts = load_dac_weights(SimpleNamespace(codec=tiny_codec(), branches={"clean": branch}), path)
    assert loaded_counts["clean_codebooks"] == 0 and all(torch.equal(before[k], v) for k, v in branch.state_dict().items())
    state, kwargs = load_dac_release(path)
    assert int(kwargs["sample_rate"]) == 16000 and isinstance(kwargs["sample_rate"], np.integer)


def test_sample_rate_mismatch_is_refused(tmp_path):
    path, _ = tiny_release(tmp_path / "dac_44khz.pth", sample_rate=44100)
    with pytest.raises(ValueError, match=r"44100 Hz.*16000 Hz") as info:
        tiny_codec_from(path)
    assert str(path) in str(info.value)


def test_shape_mismatch_is_refused(tmp_path):
    path, _ = tiny_release(tmp_path / "weights.pth")
    with pytest.raises(ValueError, match="do not fit") as info:
        tiny_codec_from(path, encoder_dim=16, latent_dim=64)
    assert str(path) in str(info.value)


def test_missing_codec_tensors_are_refused(tmp_path):
    source = tiny_codec()
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("decoder.")}
    path = save_release(tmp_path / "encoder_only.pth", state, sample_rate=np.int64(16000))
    with pytest.raises(ValueError, match="lack") as info:
        tiny_codec_from(path)
    assert str(path) in str(info.value)


# -- refusals ----------------------------------------------------------------------------------


class Payload:
    """Pickles to a call of os.system: loading it with plain pickle touches `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def test_payload_is_live(tmp_path):
    # Sanity check of the test itself: unrestricted unpickling does run the payload.
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_pickle_payload_is_not_executed(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pth"
    package = {"state_dict": tiny_codec().state_dict(), "metadata": {"kwargs": {"sample_rate": 16000}}, "evil": Payload(marker)}
    if writer == "torch":
        torch.save(package, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(package, f)
    with pytest.raises(ValueError) as info:
        tiny_codec_from(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_missing_file_is_refused(tmp_path):
    path = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(FileNotFoundError) as info:
        tiny_codec_from(path)
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError):
        tiny_codec_from(tmp_path)  # a directory is not a weights file


@pytest.mark.parametrize("content", ["bare_state_dict", "list", "text", "empty"])
def test_not_release_format_is_refused(tmp_path, content):
    path = tmp_path / f"{content}.pth"
    if content == "bare_state_dict":
        torch.save(tiny_codec().state_dict(), path)  # a state dict, not {"state_dict": ..., "metadata": ...}
    elif content == "list":
        torch.save([1, 2, 3], path)
    elif content == "text":
        path.write_text("not a checkpoint\n")
    else:
        path.write_bytes(b"")
    with pytest.raises(ValueError) as info:
        tiny_codec_from(path)
    assert str(path) in str(info.value)


# -- the real 16 kHz release architecture -------------------------------------------------------


@pytest.fixture(scope="module")
def release_16k(tmp_path_factory):
    """A DAC 16 kHz model with random weights, saved in the release format."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = dac.model.DAC(**DAC16K)
    kwargs = {**DAC16K, "latent_dim": None, "sample_rate": np.int64(16000), "encoder_dim": np.int64(64)}
    path = tmp_path_factory.mktemp("dac") / "weights_16khz.pth"
    state = model.state_dict()
    save_release(path, state, **kwargs)
    return path, state


def test_release_16k_loads_into_codec_and_module(release_16k):
    path, state = release_16k
    codec = DACCodec(sample_rate=16000, encoder_dim=64, encoder_rates=[2, 4, 5, 8], latent_dim=None, decoder_dim=1536,
                     decoder_rates=[8, 5, 4, 2])
    loaded = load_dac_weights(SimpleNamespace(codec=codec, branches={}), path)
    own = codec.state_dict()
    codec_keys = {k for k in state if k.startswith(("encoder.", "decoder."))}
    assert codec_keys == set(own) and loaded == {"codec": len(codec_keys)}
    for key in codec_keys:
        assert torch.equal(own[key], state[key]), key
    quantizer = {k.removeprefix("quantizer."): v for k, v in state.items() if k.startswith("quantizer.")}
    assert len(quantizer) == 12 * 7
    del codec

    # The full-size module from configs/model/dac16k.yaml, with the discriminators shrunk
    # (they take no part in loading).
    overrides = ["model=dac16k", f"model.codec.weights={path}", "model.discriminator.fft_sizes=[128]", "model.discriminator.channels=4"]
    with initialize_config_dir(str(usedddp.config.CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides).model
    assert cfg.branch.n_codebooks == 12 and cfg.codec.decoder_dim == 1536
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = build_module(cfg)
    for key, value in module.generator.codec.state_dict().items():
        assert torch.equal(value, state[key]), key
    for name in ("clean", "noise"):
        rvq = module.generator.branches[name].quantizer.rvq
        assert len(rvq.quantizers) == 12
        for key, value in rvq.state_dict().items():
            assert torch.equal(value, quantizer[key]), f"{name}: {key}"


def test_dac_weights_for_the_stft_codec_are_refused_by_name(tmp_path):
    # model.codec.weights is read by the recipe (models.build), not by a codec: a path given to
    # the default model's STFT codec is refused with the reason, before anything trains.
    path, _ = tiny_release(tmp_path / "weights.pth")
    with initialize_config_dir(str(usedddp.config.CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model.codec.weights={path}"]).model
    with pytest.raises(ValueError, match=r"weights\.pth.*not the STFTCodec"):
        build_module(cfg)
