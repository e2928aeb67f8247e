"""treeclip.model: registry, creation, export that plain open_clip loads, safe loading."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from PIL import Image

from treeclip.errors import TreeclipError
from treeclip.model import create_model, get_config, list_models, load_model, save_model, trim_padding

TEXTS = [
    "a photo of Animalia Chordata Aves Passeriformes Corvidae Pica hudsonia with common name black-billed magpie.",
    "a photo of Pica hudsonia.",
    "a photo of black-billed magpie.",
]


@pytest.fixture(scope="module")
def micro():
    return create_model("micro-vit-32", seed=0)


def _images(n: int = 3) -> list[Image.Image]:
    return [Image.new("RGB", (40 + 7 * i, 33), (30 * i, 200 - 40 * i, 90)) for i in range(n)]


def test_registry_has_bioclip_and_tiny_configs():
    names = list_models()
    assert {"bioclip-vit-b-16", "tiny-vit-64", "micro-vit-32"} <= set(names)
    bioclip = get_config("bioclip-vit-b-16")["model_cfg"]
    assert bioclip["embed_dim"] == 512 and bioclip["quick_gelu"] is True
    assert bioclip["vision_cfg"]["patch_size"] == 16 and bioclip["vision_cfg"]["image_size"] == 224
    assert bioclip["text_cfg"]["context_length"] == 77
    with pytest.raises(TreeclipError, match="unknown model"):
        get_config("no-such-model")


def test_seeded_creation_is_reproducible(micro):
    again = create_model("micro-vit-32", seed=0)
    other = create_model("micro-vit-32", seed=1)
    assert again.fingerprint() == micro.fingerprint()
    assert other.fingerprint() != micro.fingerprint()
    assert micro.image_size == 32 and micro.embed_dim == 64
    assert abs(micro.logit_scale() - 1 / 0.07) < 1e-3


def test_encoders_are_normalised_and_padding_trim_is_exact(micro):
    feats = micro.encode_texts(TEXTS, batch_size=2)
    assert feats.shape == (3, 64) and feats.dtype == torch.float32
    assert torch.allclose(feats.norm(dim=-1), torch.ones(3), atol=1e-5)
    tokens = micro.tokenizer(TEXTS)
    assert trim_padding(tokens).shape[1] < tokens.shape[1]
    with torch.no_grad():
        full = torch.nn.functional.normalize(micro.model.encode_text(tokens), dim=-1)
    assert torch.allclose(full, feats, atol=1e-6)
    pixels = torch.stack([micro.preprocess(im) for im in _images()])
    img = micro.encode_images(pixels)
    assert img.shape == (3, 64) and torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_export_loads_in_plain_open_clip_with_identical_embeddings(micro, tmp_path):
    import open_clip

    with torch.no_grad():  # perturb so the weights are not just the seeded init
        micro.model.logit_scale.fill_(3.0)
    out = save_model(micro, tmp_path / "model", meta={"note": "test"})
    assert {p.name for p in out.iterdir()} == {"open_clip_config.json", "open_clip_model.safetensors", "treeclip.json"}
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    model.eval()
    pixels_oc = torch.stack([preprocess(im) for im in _images()])
    pixels_tc = torch.stack([micro.preprocess(im) for im in _images()])
    assert torch.equal(pixels_oc, pixels_tc)
    with torch.no_grad():
        img_oc = model.encode_image(pixels_oc, normalize=True)
        txt_oc = model.encode_text(tokenizer(TEXTS), normalize=True)
    assert torch.equal(img_oc, micro.encode_images(pixels_tc))
    assert torch.allclose(txt_oc, micro.encode_texts(TEXTS), atol=1e-6)
    assert float(model.logit_scale.detach()) == 3.0

    loaded = load_model(f"local-dir:{out}")
    assert loaded.fingerprint() == micro.fingerprint(refresh=True)
    assert json.loads((out / "treeclip.json").read_text())["meta"] == {"note": "test"}
    # initialise a fresh model from the exported weights file
    init = create_model("micro-vit-32", pretrained=str(out / "open_clip_model.safetensors"))
    assert init.fingerprint() == micro.fingerprint()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bin_checkpoints_load_without_unpickling_code(micro, tmp_path):
    good = tmp_path / "good" / "open_clip_pytorch_model.bin"
    good.parent.mkdir()
    torch.save({"state_dict": {f"module.{k}": v for k, v in micro.model.state_dict().items()}}, good)
    (good.parent / "open_clip_config.json").write_text(json.dumps({"model_cfg": micro.config["model_cfg"]}))
    assert load_model(str(good)).fingerprint() == micro.fingerprint(refresh=True)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(TreeclipError, match="evil.bin: cannot read weights"):
        create_model("micro-vit-32", pretrained=str(evil))


def test_bad_specs_fail_with_one_line(tmp_path):
    with pytest.raises(TreeclipError, match="no such model dir"):
        load_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TreeclipError, match="no weights file"):
        load_model(f"local-dir:{tmp_path / 'empty'}")
    other = create_model("micro-vit-32")
    save_model(other, tmp_path / "m")
    with pytest.raises(TreeclipError, match="do not fit"):
        create_model("tiny-vit-64", pretrained=str(tmp_path / "m"))


def test_models_command_lists_parameter_counts():
    from click.testing import CliRunner

    from treeclip.cli import cli

    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {json.loads(line)["name"]: json.loads(line) for line in result.output.splitlines()}
    assert rows["bioclip-vit-b-16"]["parameters"] > 149_000_000
    assert rows["micro-vit-32"]["parameters"] < rows["tiny-vit-64"]["parameters"]


def test_bioclip_2_architecture_is_registered_and_listed():
    from click.testing import CliRunner

    from treeclip.cli import cli

    cfg = get_config("bioclip-2-vit-l-14")
    mc, pp = cfg["model_cfg"], cfg["preprocess_cfg"]
    assert mc["embed_dim"] == 768 and not mc.get("quick_gelu", False)  # LAION-2B ViT-L-14: plain GELU
    assert mc["vision_cfg"] == {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14}
    assert mc["text_cfg"]["width"] == 768 and mc["text_cfg"]["context_length"] == 77
    assert pp["size"] == 224 and pp["mean"] == [0.48145466, 0.4578275, 0.40821073]
    import open_clip

    assert mc["vision_cfg"] == open_clip.get_model_config("ViT-L-14")["vision_cfg"]
    result = CliRunner().invoke(cli, ["models", "--json"])
    rows = {json.loads(line)["name"]: json.loads(line) for line in result.output.splitlines()}
    assert 427_000_000 < rows["bioclip-2-vit-l-14"]["parameters"] < 429_000_000
    assert rows["bioclip-2-vit-l-14"]["embed_dim"] == 768


def test_bioclip_2_5_architecture_is_open_clips_vit_h_14():
    import open_clip

    from treeclip.model.factory import count_parameters

    cfg = get_config("bioclip-2.5-vit-h-14")
    reference = open_clip.get_model_config("ViT-H-14")
    assert cfg["model_cfg"]["vision_cfg"] == reference["vision_cfg"]
    assert cfg["model_cfg"]["text_cfg"] == reference["text_cfg"] and cfg["model_cfg"]["embed_dim"] == 1024
    assert 980_000_000 < count_parameters(cfg) < 990_000_000


def test_hub_spec_names_are_checked_and_resolved_from_refs_main(tmp_path, monkeypatch):
    from treeclip.model import hub

    for bad in ("hf-hub:", "hf-hub:org", "hf-hub:a/b/c", "hf-hub:../x", "hf-hub:a/..", "hf-hub:/abs"):
        with pytest.raises(TreeclipError, match="not a Hugging Face repo id"):
            hub.repo_id(bad)
    repo = tmp_path / "models--org--name"
    (repo / "snapshots" / "r1").mkdir(parents=True)
    (repo / "snapshots" / "r2").mkdir(parents=True)
    (repo / "snapshots" / "r2" / "x.json").write_text("{}")
    find = lambda: hub.find_snapshot("hf-hub:org/name", "model", [("x.json",)], what="x", hub=tmp_path)  # noqa: E731
    with pytest.raises(TreeclipError, match=r"no refs/main, 2 snapshots"):
        find()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("r2\n")  # written by hand: the newline is not part of the name
    assert find() == repo / "snapshots" / "r2"
    (repo / "refs" / "main").write_text("../../../etc")
    with pytest.raises(TreeclipError, match="not a revision"):
        find()
    assert hub.published_label_set("hf-hub:Imageomics/BioCLIP-2") == "hf-hub:imageomics/TreeOfLife-200M"
    assert hub.published_label_set("hf-hub:org/name") is None
