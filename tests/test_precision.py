"""The precision policy (`treeclip.runtime.precision`): every CPU class's branch, forced
through `TREECLIP_CPU_FEATURES` so it runs on any machine, and the fast paths' agreement
with fp32 measured on a trained model."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from conftest import FEATURE_SETS
from treeclip.cache import CachePaths
from treeclip.errors import TreeclipError
from treeclip.runtime import precision as policy
from treeclip.runtime.encoder import ImageEncoder, top1_agreement
from treeclip.runtime.options import InferenceOptions

CPU = torch.device("cpu")

# CPU class -> (auto, fast) as docs/predict.md's table says
EXPECTED = {"avx2": ("fp32", "int8"), "avx512": ("fp32", "int8"),
            "avx512_bf16": ("bf16", "int8"), "amx": ("bf16", "int8"), "bf16_no_vnni": ("bf16", "bf16")}


def test_policy_table_for_every_cpu_class(cpu_features):
    auto, fast = EXPECTED[cpu_features]
    features = policy.cpu_features()
    assert features.source == policy.FEATURES_ENV
    assert policy.resolve_precision("auto", CPU) == auto
    assert policy.resolve_precision("fast", CPU) == fast
    # without ONNX Runtime, fast falls back to bf16 where it is native, else exact fp32
    assert policy.resolve_precision("fast", CPU, onnx=False) == auto
    for explicit in ("fp32", "bf16", "int8"):
        assert policy.resolve_precision(explicit, CPU) == explicit
    assert policy.resolve_train_precision("auto", CPU) == auto
    assert policy.resolve_train_precision("fp16", CPU) == "bf16"  # what CPU autocast runs, reported as such


def test_fast_prefers_int8_where_int8_is_native_and_bf16_where_only_bf16_is():
    bf16_only = policy.parse_features("avx2,avx512,avx512_bf16")  # bf16 units, no VNNI
    assert policy.resolve_precision("fast", CPU, features=bf16_only, onnx=True) == "bf16"
    vnni = policy.parse_features("avx2,avx512,avx512_bf16,vnni")
    assert policy.resolve_precision("fast", CPU, features=vnni, onnx=True) == "int8"
    assert policy.resolve_precision("fast", CPU, features=vnni, onnx=False) == "bf16"
    assert policy.resolve_precision("auto", CPU, features=vnni, onnx=True) == "bf16"  # auto never quantizes
    plain_vnni = policy.parse_features("avx2,avx512,vnni")
    assert policy.resolve_precision("fast", CPU, features=plain_vnni, onnx=False) == "fp32"


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
    enc = ImageEncoder(clip, precision="fast", caches=CachePaths(tmp_path))
    assert enc.precision == fast
    out = enc(trained.pixels[:4])
    assert out.dtype == torch.float32 and out.shape == (4, clip.embed_dim)
    assert clip.model.visual.conv1.weight.dtype == torch.float32  # the caller's model is untouched


# Measured on the `trained` fixture (144 held-out images, 24 species; fp32 accuracy 0.257,
# median top-1/top-2 cosine margin 0.0022: near-ties), AVX2 EPYC, when bf16 ran FastVisual:
# bf16 top-1 agreement 0.993, min cosine 0.99997; int8 (ONNX_FORMAT 2) agreement 0.896, min
# cosine 0.9964 (the old open_clip-graph int8: 0.924, 0.9972). On a better-trained model
# (tiny-vit-64, 100 species, 600 steps, accuracy 0.910, 1000 images) int8 agrees 1.000 and
# bf16 0.998 (docs/benchmarks.md). The thresholds leave room for other CPUs' rounding, not
# for a broken path.
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
    enc = ImageEncoder(trained.clip, precision="int8", caches=CachePaths(tmp_path))
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
    emb = embed_images(trained.clip, images, options=InferenceOptions.for_verb("embed", workers=0))
    assert emb.precision == "fp32"
    pixels = torch.stack([trained.clip.preprocess(im) for im in images])
    np.testing.assert_allclose(emb.vectors, trained.clip.encode_images(pixels).numpy(), atol=1e-6)


# -- the CPU encoder: FastVisual, fixed-size one-thread calls, streams --------------------------
def test_fast_visual_is_open_clips_arithmetic(trained):
    """FastVisual (class-token-only last block, one-pass QuickGELU, fused attention) gives
    open_clip's embeddings up to fp32 rounding and shares the weights (the int8 export's
    graph); fp32 runs open_clip's module itself."""
    from treeclip.runtime.vit import FastVisual, fast_visual

    visual = trained.clip.model.visual.eval()
    fast = fast_visual(visual)
    assert isinstance(fast, FastVisual)
    with torch.inference_mode():
        ref, out = visual(trained.pixels), fast(trained.pixels)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    assert fast.blocks[0].fc_w.data_ptr() == visual.transformer.resblocks[0].mlp.c_fc.weight.data_ptr()
    folded = fast_visual(visual, fold=True)  # scaled copies, for an export
    assert folded.blocks[0].fc_w.data_ptr() != visual.transformer.resblocks[0].mlp.c_fc.weight.data_ptr()
    with torch.inference_mode():
        assert torch.allclose(folded(trained.pixels), ref, atol=1e-5, rtol=1e-5)
    # the torch paths run open_clip's module (FastVisual did not pay there: 1.02-1.08x)
    assert ImageEncoder(trained.clip, precision="fp32", backend="torch").visual is visual


def test_patch_embedding_as_a_product_is_the_convolution(trained):
    """The patch embedding runs as one product over the flattened patches where they do
    not overlap, and as open_clip's convolution where they do (or the size does not divide)."""
    from treeclip.runtime.vit import fast_visual

    fast = fast_visual(trained.clip.model.visual.eval())
    conv, pixels = fast.conv1, trained.pixels[:3]
    with torch.inference_mode():
        ref = conv(pixels).flatten(2).transpose(1, 2)
        assert torch.allclose(fast._patches(pixels), ref, atol=1e-5, rtol=1e-5)
        odd = pixels[..., :-1, :-1]  # not a multiple of the patch: the convolution drops the rest
        assert torch.equal(fast._patches(odd), conv(odd).flatten(2).transpose(1, 2))
        overlapping = torch.nn.Conv2d(3, conv.out_channels, conv.kernel_size, stride=conv.kernel_size[0] // 2,
                                      bias=False)
        fast.conv1 = overlapping
        assert torch.equal(fast._patches(pixels), overlapping(pixels).flatten(2).transpose(1, 2))


def test_towers_fast_visual_does_not_cover_run_as_open_clip(trained):
    import copy

    from treeclip.runtime.vit import fast_visual

    visual = copy.deepcopy(trained.clip.model.visual)
    visual.pool_type = "avg"  # average pooling reads every token: no class-token shortcut
    assert fast_visual(visual) is None
    clip = copy.copy(trained.clip)
    clip.model = copy.deepcopy(trained.clip.model)
    clip.model.visual.pool_type = "avg"
    enc = ImageEncoder(clip, precision="fp32", backend="torch")
    assert enc.visual is clip.model.visual
    assert torch.allclose(enc(trained.pixels[:6]), clip.encode_images(trained.pixels[:6]), atol=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_answers_do_not_depend_on_batch_mates_threads_or_streams(trained, precision, tmp_path):
    """The same bits for an image alone, among others, at any position, with 1 or 3 streams
    and any torch thread count: resumed runs and torchrun splits write identical rows."""
    torch.set_num_threads(2)
    pixels = trained.pixels[:11]
    enc = ImageEncoder(trained.clip, precision=precision, caches=CachePaths(tmp_path))
    whole = enc(pixels)
    assert torch.equal(enc(pixels[3:4])[0], whole[3])
    assert torch.equal(enc(pixels[2:9]), whole[2:9])
    torch.set_num_threads(1)
    one = ImageEncoder(trained.clip, precision=precision, caches=CachePaths(tmp_path), streams=1)
    three = ImageEncoder(trained.clip, precision=precision, caches=CachePaths(tmp_path), streams=3)
    assert torch.equal(one(pixels), whole) and torch.equal(three(pixels), whole)
    assert enc(pixels[:0]).shape == (0, trained.clip.embed_dim)


def test_exact_path_takes_the_faster_backend_within_the_exact_bar(trained, tmp_path):
    """fp32 `auto` measures torch against ONNX Runtime and OpenVINO once per model and
    machine, keeps the record, and whichever runs gives torch's embeddings within 1e-5."""
    from treeclip.runtime.backends import RECORD, record_key

    caches = CachePaths(tmp_path)
    enc = ImageEncoder(trained.clip, precision="fp32", caches=caches)
    record = json.loads((caches.onnx / RECORD).read_text())[record_key(trained.clip, "fp32")]
    assert enc.backend == record["backend"] and set(record["s_per_image"]) == {"torch", "onnxruntime", "openvino"}
    assert record["agreement"]["onnxruntime"]["max_abs"] <= 1e-5 and record["agreement"]["openvino"]["max_abs"] <= 1e-5
    pixels = trained.pixels[:8]
    torch_only = ImageEncoder(trained.clip, precision="fp32", caches=caches, backend="torch")
    assert torch_only.backend == "torch"
    for name in ("onnxruntime", "openvino"):
        forced = ImageEncoder(trained.clip, precision="fp32", caches=caches, backend=name)
        assert forced.backend == name
        assert (forced(pixels) - torch_only(pixels)).abs().max() <= 1e-5
    (caches.onnx / RECORD).write_text(json.dumps({record_key(trained.clip, "fp32"): {"backend": "torch"}}))
    assert ImageEncoder(trained.clip, precision="fp32", caches=caches).backend == "torch"  # the record decides


def test_bf16_takes_openvino_where_it_measures_faster(trained, tmp_path):
    """bf16 `auto` times torch's bf16 tower against OpenVINO's bf16 kernels; OpenVINO's
    embeddings hold bf16's bar against fp32; ONNX Runtime has no bf16 and says so."""
    from treeclip.runtime.backends import BF16_MIN_COSINE, RECORD, agreement, record_key

    caches = CachePaths(tmp_path)
    enc = ImageEncoder(trained.clip, precision="bf16", caches=caches)
    record = json.loads((caches.onnx / RECORD).read_text())[record_key(trained.clip, "bf16")]
    assert enc.backend == record["backend"] and set(record["s_per_image"]) == {"torch", "openvino"}
    openvino = ImageEncoder(trained.clip, precision="bf16", caches=caches, backend="openvino")
    assert openvino.backend == "openvino" and openvino.precision == "bf16"
    fp32 = ImageEncoder(trained.clip, precision="fp32", caches=caches, backend="torch")
    pixels = trained.pixels[:8]
    assert agreement(fp32(pixels), openvino(pixels))[1] >= BF16_MIN_COSINE
    with pytest.raises(TreeclipError, match="does not run bf16"):
        ImageEncoder(trained.clip, precision="bf16", caches=caches, backend="onnxruntime")


def test_openvino_bits_do_not_depend_on_streams(trained, tmp_path):
    pixels = trained.pixels[:7]
    one = ImageEncoder(trained.clip, precision="fp32", backend="openvino", caches=CachePaths(tmp_path), streams=1)
    three = ImageEncoder(trained.clip, precision="fp32", backend="openvino", caches=CachePaths(tmp_path), streams=3)
    whole = one(pixels)
    assert torch.equal(three(pixels), whole) and torch.equal(three(pixels[2:3])[0], whole[2])


def test_a_missing_library_is_no_candidate_and_forcing_it_says_so(trained, tmp_path, monkeypatch):
    from treeclip.runtime import backends
    from treeclip.runtime import precision as policy_module

    monkeypatch.setattr(policy_module, "openvino_available", lambda: False)
    caches = CachePaths(tmp_path)
    ImageEncoder(trained.clip, precision="fp32", caches=caches)
    record = backends.BackendRecords(caches.onnx).get(backends.record_key(trained.clip, "fp32"))
    assert set(record["s_per_image"]) == {"torch", "onnxruntime"}
    with pytest.raises(TreeclipError, match="--backend openvino does not run fp32 here"):
        ImageEncoder(trained.clip, precision="fp32", caches=caches, backend="openvino")
    monkeypatch.setattr(policy_module, "onnxruntime_available", lambda: False)
    assert ImageEncoder(trained.clip, precision="bf16", caches=CachePaths(tmp_path / "none")).backend == "torch"


def test_torch_compile_competes_only_when_asked(trained, tmp_path, monkeypatch):
    """`compile=True` adds torch.compile to the measured candidates (its own record);
    without it, no compile is ever made."""
    from treeclip.runtime import backends

    made = []
    monkeypatch.setattr(torch, "compile", lambda module: made.append(module) or module)
    caches = CachePaths(tmp_path)
    ImageEncoder(trained.clip, precision="fp32", caches=caches)
    assert not made
    enc = ImageEncoder(trained.clip, precision="fp32", caches=caches, compile=True)
    record = backends.BackendRecords(caches.onnx).get(backends.record_key(trained.clip, "fp32", compile=True))
    assert "torch.compile" in record["s_per_image"] and made
    assert enc.backend == record["backend"]
    assert ImageEncoder(trained.clip, precision="fp32", caches=caches, compile=True, backend="torch").backend \
        == "torch.compile"


def test_choose_picks_the_fastest_candidate_within_the_bar_of_its_precision():
    from treeclip.runtime.backends import choose

    pixels = torch.randn(3, 8)
    weight = torch.randn(8, 4)

    def slow(x):
        for _ in range(200):
            y = x @ weight
        return y

    fast = lambda x: x @ weight  # noqa: E731
    noisy = lambda x: x @ weight + 1e-3 * torch.randn(x.shape[0], 4)  # noqa: E731
    record, built = choose("fp32", slow, {"fast": lambda: fast}, pixels)
    assert record["backend"] == "fast" and built["fast"] is fast
    rejected, _ = choose("fp32", slow, {"noisy": lambda: noisy}, pixels)
    assert rejected["backend"] == "torch" and rejected["agreement"]["noisy"]["max_abs"] > 1e-5
    assert choose("bf16", slow, {"noisy": lambda: noisy}, pixels, own=slow)[0]["backend"] == "noisy"  # bf16's bar
    broken, _ = choose("fp32", slow, {"broken": lambda: (_ for _ in ()).throw(RuntimeError("no export"))}, pixels)
    assert broken["backend"] == "torch" and broken["agreement"]["broken"].startswith("unavailable")


@pytest.mark.parametrize("features, fallback", [("avx2,avx512,vnni", "fp32"),  # int8 units, no bf16 ones
                                                ("amx", "bf16")])
def test_an_int8_graph_off_fp32_falls_back(trained, tmp_path, monkeypatch, features, fallback):
    """`fast` keeps int8 only when its embeddings hold on calibration images; otherwise
    the next precision the CPU runs natively (bf16 with bf16 units, else fp32)."""
    from treeclip.runtime import backends

    monkeypatch.setenv("TREECLIP_CPU_FEATURES", FEATURE_SETS.get(features, features))
    assert ImageEncoder(trained.clip, precision="fast", caches=CachePaths(tmp_path / "ok")).precision == "int8"
    monkeypatch.setattr(backends, "int8_holds", lambda *a: {"holds": False, "max_abs": 0.3, "min_cosine": 0.6})
    enc = ImageEncoder(trained.clip, precision="fast", caches=CachePaths(tmp_path / "off"))
    assert enc.precision == fallback
    assert ImageEncoder(trained.clip, precision="int8", caches=CachePaths(tmp_path / "off")).precision == "int8"
