"""The exact path is exact: `--precision fp32` predictions and `embed`'s default see the
pixels of the model's own open_clip preprocess, with no JPEG draft decode, even on a
photo large enough for the fast paths' draft to kick in."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from treeclip.runtime.options import InferenceOptions


@pytest.fixture(scope="module")
def model_and_photo(tmp_path_factory):
    from treeclip.model import create_model, save_model

    root = tmp_path_factory.mktemp("exact")
    model_dir = save_model(create_model("micro-vit-32", seed=3), root / "model")
    rng = np.random.default_rng(0)
    # a camera-sized JPEG with detail at every scale, so a 1/8-scale draft decode differs
    photo = rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    path = root / "photo.jpg"
    Image.fromarray(photo).save(path, quality=90)
    return model_dir, path


def _open_clip(model_dir):
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    return model.eval(), preprocess


def test_exact_pixels_equal_open_clips_preprocess_and_the_draft_does_not(model_and_photo):
    from treeclip.runtime.images import Item, iter_batches

    model_dir, path = model_and_photo
    _, preprocess = _open_clip(model_dir)
    reference = preprocess(Image.open(path).convert("RGB"))

    def pixels(exact: bool) -> torch.Tensor:
        (_, _, batch, errors), = iter_batches([Item("photo.jpg", str(path))], preprocess, draft_size=32, exact=exact)
        assert not errors
        return batch[0]

    assert torch.equal(pixels(exact=True), reference)
    assert not torch.equal(pixels(exact=False), reference)  # the draft decode is a different image


def test_embed_and_fp32_predict_match_plain_open_clip(model_and_photo):
    from treeclip.predict import CustomLabelsClassifier
    from treeclip.predict.embed import embed_images

    model_dir, path = model_and_photo
    model, preprocess = _open_clip(model_dir)
    with torch.no_grad():
        reference = torch.nn.functional.normalize(model.encode_image(preprocess(Image.open(path).convert("RGB"))[None]),
                                                  dim=-1)[0].numpy()
    emb = embed_images(str(model_dir), [str(path)])
    assert emb.precision == "fp32"
    np.testing.assert_allclose(emb.vectors[0], reference, atol=1e-5)

    clf = CustomLabelsClassifier(str(model_dir), ["a red thing", "a blue thing"],
                                 options=InferenceOptions(precision="fp32", templates="single"))
    (_, probs, ok, _), = clf.encoded_batches([str(path)])
    expected = clf.probabilities(torch.from_numpy(reference)[None])
    assert ok == [0]
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_squash_is_a_plain_resize_and_crop_is_open_clips(model_and_photo, tmp_path):
    """`--resize squash` = pybioclip's preprocessing: the whole photo resized to the square
    input size (no centre crop), then the model's normalisation."""
    from torchvision.transforms import functional as TF

    from treeclip.errors import TreeclipError
    from treeclip.model import load_model
    from treeclip.predict.embed import embed_images

    model_dir, path = model_and_photo
    clip = load_model(str(model_dir))
    img = Image.open(path).convert("RGB")
    cfg = clip.config["preprocess_cfg"]
    plain = TF.normalize(TF.to_tensor(img.resize((clip.image_size, clip.image_size), Image.BICUBIC)),
                         cfg["mean"], cfg["std"])
    squashed = clip.preprocess_for("squash")(img)
    assert squashed.shape == plain.shape and torch.allclose(squashed, plain, atol=1e-6)
    assert clip.preprocess_for("crop") is clip.preprocess
    assert not torch.allclose(clip.preprocess(img), squashed, atol=1e-3)  # a 4:3 photo: the crop differs
    with pytest.raises(TreeclipError, match="unknown resize"):
        clip.preprocess_for("stretch")

    # embed with squash: the same vector as encoding the plain resize
    emb = embed_images(str(model_dir), [str(path)], options=InferenceOptions.for_verb("embed", resize="squash"),
                       normalize=False)
    with torch.no_grad():
        want = clip.model.encode_image(plain[None])[0].numpy()
    np.testing.assert_allclose(emb.vectors[0], want, atol=1e-5)
