"""The precision policy (`treeclip.runtime.precision`): every CPU class's branch, forced
through `TREECLIP_CPU_FEATURES` so it runs on any machine, and the fast paths' agreement
with fp32 measured on a trained model."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from treeclip.errors import TreeclipError
from treeclip.runtime import precision as policy
from treeclip.runtime.encoder import ImageEncoder, top1_agreement

CPU = torch.device("cpu")

# CPU class -> (auto, fast) as docs/predict.md's table says
EXPECTED = {"avx2": ("fp32", "int8"), "avx512": ("fp32", "int8"),
            "avx512_bf16": ("bf16", "bf16"), "amx": ("bf16", "bf16")}


def test_policy_table_for_every_cpu_class(cpu_features):
    auto, fast = EXPECTED[cpu_features]
    features = policy.cpu_features()
    assert features.source == policy.FEATURES_ENV
    assert policy.resolve_precision("auto", CPU) == auto
    assert policy.resolve_precision("fast", CPU) == fast
    # without ONNX Runtime, fast falls back to exact fp32 where bf16 is not native
    assert policy.resolve_precision("fast", CPU, onnx=False) == ("bf16" if fast == "bf16" else "fp32")
    for explicit in ("fp32", "bf16", "int8"):
        assert policy.resolve_precision(explicit, CPU) == explicit
    assert policy.resolve_train_precision("auto", CPU) == auto
    assert policy.resolve_train_precision("fp16", CPU) == "fp16"


def test_plain_avx512_is_not_native_bf16():
    f = policy.parse_features("avx2,avx512,vnni")
    assert not f.native_bf16 and f.native_int8
    assert policy.parse_features("amx").native_bf16 and policy.parse_features("amx").native_int8
    assert policy.parse_features("none").describe() == "none"
    assert policy.parse_features("AVX2, avx512_bf16").describe() == "avx2,avx512_bf16"


def test_unknown_features_and_precisions_are_one_line_errors(monkeypatch):
    monkeypatch.setenv(policy.FEATURES_ENV, "avx2,sse9")
    with pytest.raises(TreeclipError, match="unknown CPU feature.*sse9"):
        policy.cpu_features()
    with pytest.raises(TreeclipError, match="unknown precision 'fp8'"):
        policy.resolve_precision("fp8", CPU)
    with pytest.raises(TreeclipError, match="unknown precision 'int8'"):
        policy.resolve_train_precision("int8", CPU)
    with pytest.raises(TreeclipError, match="CPU only"):
        policy.resolve_precision("int8", torch.device("cuda"))
    with pytest.raises(TreeclipError, match="not a torch device"):
        policy.resolve_device("gpu-please")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_probe_agrees_with_proc_cpuinfo(monkeypatch):
    monkeypatch.delenv(policy.FEATURES_ENV, raising=False)
    probed = policy.cpu_features()
    listed = policy._proc_cpuinfo_flags()
    assert probed.source == "probe"
    for flag in ("avx2", "avx512", "avx512_bf16", "amx"):
        assert getattr(probed, flag) == listed[flag], flag


def test_encoder_follows_the_policy(cpu_features, trained, tmp_path):
    """What `fast` and `auto` build on each CPU class is the precision that runs."""
    auto, fast = EXPECTED[cpu_features]
    clip = trained.clip
    assert ImageEncoder(clip, precision="auto").precision == auto
    enc = ImageEncoder(clip, precision="fast", cache_dir=str(tmp_path))
    assert enc.precision == fast
    out = enc(trained.pixels[:4])
    assert out.dtype == torch.float32 and out.shape == (4, clip.embed_dim)
    assert clip.model.visual.conv1.weight.dtype == torch.float32  # the caller's model is untouched


# Measured on the `trained` fixture (144 held-out images, 24 species), AVX2 EPYC:
# bf16 top-1 agreement 1.000, min cosine 0.99998; int8 agreement 0.924, min cosine 0.9972.
# The thresholds leave room for other CPUs' rounding, not for a broken path.
BF16_MIN_AGREEMENT, BF16_MIN_COSINE = 0.97, 0.999
INT8_MIN_AGREEMENT, INT8_MIN_COSINE = 0.80, 0.99


def _fp32(trained):
    return ImageEncoder(trained.clip, precision="fp32")(trained.pixels)


def test_fp32_path_is_the_models_own(trained):
    fp32 = _fp32(trained)
    assert torch.allclose(fp32, trained.clip.encode_images(trained.pixels), atol=1e-6)
    accuracy = float(((fp32 @ trained.labels.T).argmax(-1) == trained.truth).float().mean())
    assert accuracy > 3 / 24  # the fixture really learned (chance is 1/24)


def test_bf16_agrees_with_fp32_on_a_trained_model(trained):
    fp32 = _fp32(trained)
    bf16 = ImageEncoder(trained.clip, precision="bf16")(trained.pixels)
    assert top1_agreement(fp32, bf16, trained.labels) >= BF16_MIN_AGREEMENT
    assert float((fp32 * bf16).sum(-1).min()) >= BF16_MIN_COSINE


def test_int8_agrees_with_fp32_on_a_trained_model(trained, tmp_path):
    fp32 = _fp32(trained)
    enc = ImageEncoder(trained.clip, precision="int8", cache_dir=str(tmp_path))
    int8 = enc(trained.pixels)
    assert top1_agreement(fp32, int8, trained.labels) >= INT8_MIN_AGREEMENT
    assert float((fp32 * int8).sum(-1).min()) >= INT8_MIN_COSINE
    # one image per run: an answer never depends on its batch mates
    assert torch.equal(enc(trained.pixels[:5])[3], enc(trained.pixels[3:4])[0])


def test_embed_is_fp32_by_default_on_every_cpu(cpu_features, trained, tmp_path):
    """`embed_images` (and so `treeclip embed`) returns exact fp32 whatever the CPU."""
    from PIL import Image

    from treeclip.predict.embed import embed_images

    images = [Image.fromarray((trained.pixels[i].permute(1, 2, 0).numpy() * 60 + 120).clip(0, 255)
                              .astype(np.uint8)) for i in range(6)]
    emb = embed_images(trained.clip, images, workers=0)
    assert emb.precision == "fp32"
    pixels = torch.stack([trained.clip.preprocess(im) for im in images])
    np.testing.assert_allclose(emb.vectors, trained.clip.encode_images(pixels).numpy(), atol=1e-6)
