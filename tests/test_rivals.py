"""IsoCLIP projector band and modality-gap shift on tiny random models."""

import pytest
import torch
import torch.nn.functional as F

from crossgap_qdrant.rivals import (
    FeatureTransform,
    IsoCLIPProjector,
    ModalityGapShift,
    TransformVector,
    fit_gap_shift,
    image_pre_projection,
    isoclip_cuts,
    isoclip_rank,
    text_pre_projection,
)

TEXTS = ["a photo of a dog", "a red car", "two cats on a sofa", "a mountain"]


@pytest.fixture(scope="module")
def pixels():
    return torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(params=["tiny_clip", "tiny_bidir"])
def any_model(request):
    return request.getfixturevalue(request.param)


def test_pre_projection_reproduces_native_features(any_model, pixels):
    model, _, tokenizer = any_model
    ids = tokenizer(TEXTS)
    pre_img = image_pre_projection(model, pixels)
    assert pre_img.shape == (5, 64)
    torch.testing.assert_close(pre_img @ model.visual.proj, model.encode_image(pixels), rtol=1e-5, atol=1e-5)
    pre_txt = text_pre_projection(model, ids)
    assert pre_txt.shape == (4, 48)
    proj = model.text.text_projection if hasattr(model, "text") else model.text_projection
    native = proj(pre_txt) if isinstance(proj, torch.nn.Linear) else pre_txt @ proj
    torch.testing.assert_close(native, model.encode_text(ids), rtol=1e-5, atol=1e-5)
    # the projector is restored
    holder = model.text if hasattr(model, "text") else model
    assert model.visual.proj is not None and holder.text_projection is proj


def test_whole_band_reproduces_native_similarities(any_model, pixels):
    model, _, tokenizer = any_model
    ids = tokenizer(TEXTS)
    iso = IsoCLIPProjector.from_model(model)
    assert iso.rank == 32 and iso.image_basis.shape == (64, 32) and iso.text_basis.shape == (48, 32)
    img, txt = iso.encode_images(model, pixels), iso.encode_texts(model, ids)
    native_img = F.normalize(model.encode_image(pixels), dim=-1)
    native_txt = F.normalize(model.encode_text(ids), dim=-1)
    torch.testing.assert_close(img @ txt.T, native_img @ native_txt.T, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(img @ img.T, native_img @ native_img.T, rtol=1e-4, atol=1e-5)


def test_cut_removes_exactly_those_directions(tiny_clip, pixels):
    model, _, tokenizer = tiny_clip
    full = IsoCLIPProjector.from_model(model)
    cut = IsoCLIPProjector.from_model(model, k_top=3, k_bottom=5)
    assert cut.image_basis.shape == (64, 24) and cut.text_basis.shape == (48, 24)
    torch.testing.assert_close(cut.singular_values, full.singular_values)
    # the kept basis is the middle slice of the full one (up to sign)
    overlap = full.image_basis.T @ cut.image_basis  # [32, 24]
    torch.testing.assert_close(overlap.abs(), torch.eye(32)[:, 3:27], atol=1e-4, rtol=0)
    # projected features have no component along the dropped directions
    pre = image_pre_projection(model, pixels)
    kept = (pre @ cut.image_basis) @ cut.image_basis.T
    dropped = torch.cat([full.image_basis[:, :3], full.image_basis[:, 27:]], dim=1)
    assert (kept @ dropped).abs().max() < 1e-4
    # the image-text bilinear form equals the band of the SVD: x U_b S_b V_b^T y
    ids = tokenizer(TEXTS)
    pre_t = text_pre_projection(model, ids)
    bilinear = cut.project_image(model, pre) @ cut.project_text(model, pre_t).T
    expected = (pre @ cut.image_basis) @ torch.diag(full.singular_values[3:27]) @ (pre_t @ cut.text_basis).T
    torch.testing.assert_close(bilinear, expected, rtol=1e-3, atol=1e-4)
    # and the cut changes image-image similarities
    native = F.normalize(model.encode_image(pixels), dim=-1)
    iso = cut.encode_images(model, pixels)
    assert not torch.allclose(iso @ iso.T, native @ native.T, atol=1e-3)


def test_isoclip_errors(tiny_clip):
    model, _, _ = tiny_clip
    with pytest.raises(ValueError, match="leaves no direction"):
        IsoCLIPProjector.from_model(model, k_top=16, k_bottom=16)
    with pytest.raises(ValueError, match=">= 0"):
        IsoCLIPProjector.from_model(model, k_top=-1)
    with pytest.raises(ValueError, match="modality"):
        IsoCLIPProjector.from_model(model).vector("audio")
    with pytest.raises(ValueError, match="modality"):
        ModalityGapShift.fit(torch.ones(2, 4), -torch.ones(2, 4)).vector("audio")


def test_isoclip_as_derived_vector(tiny_clip, pixels):
    model, _, tokenizer = tiny_clip
    iso = IsoCLIPProjector.from_model(model, k_top=2)
    image_vec, text_vec = iso.vector("image"), iso.vector("text")
    assert isinstance(image_vec, TransformVector) and image_vec.modality == "image" and image_vec.dim == 32
    out = image_vec.compute(model, pixels)
    assert out.shape == (5, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(5))
    assert text_vec.compute(model, tokenizer(TEXTS)).shape == (4, 32)


def test_gap_shift_moves_means_together(tiny_clip, pixels):
    model, preprocess, tokenizer = tiny_clip
    img = F.normalize(model.encode_image(pixels), dim=-1)
    txt = F.normalize(model.encode_text(tokenizer(TEXTS)), dim=-1)
    shift = ModalityGapShift.fit(img, txt)
    gap_before = (img.mean(0) - txt.mean(0)).norm()
    moved = shift.image_to_text(img)
    assert moved.shape == img.shape
    torch.testing.assert_close(moved.norm(dim=-1), torch.ones(5))
    assert (moved.mean(0) - txt.mean(0)).norm() < 0.5 * gap_before
    back = shift.text_to_image(txt)
    assert (back.mean(0) - img.mean(0)).norm() < 0.5 * gap_before
    # before renormalisation the shift is exact: the shifted image mean is the text mean
    torch.testing.assert_close((img + shift.gap).mean(0), txt.mean(0), rtol=1e-5, atol=1e-6)


def test_gap_shift_as_derived_vector_and_fit(tiny_clip, pixels):
    model, preprocess, tokenizer = tiny_clip
    from PIL import Image

    images = [Image.new("RGB", (40, 40), (i * 40, 10, 200 - i * 30)) for i in range(4)]
    shift = fit_gap_shift(model, tokenizer, preprocess, images)  # texts default to generic captions
    vec = shift.vector("image")
    assert isinstance(vec, TransformVector) and vec.dim == 32
    out = vec.compute(model, pixels)
    expected = shift.image_to_text(model.encode_image(pixels))
    torch.testing.assert_close(out, expected)
    assert shift.vector("text").compute(model, tokenizer(TEXTS)).shape == (4, 32)


def test_gap_shift_errors():
    with pytest.raises(ValueError, match="non-empty"):
        ModalityGapShift.fit(torch.zeros(0, 4), torch.ones(2, 4))
    with pytest.raises(ValueError, match="width"):
        ModalityGapShift.fit(torch.ones(2, 4), torch.ones(2, 5))
    shift = ModalityGapShift.fit(torch.ones(2, 4), -torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        shift.image_to_text(torch.ones(3, 5))
    with pytest.raises(ValueError, match="sample of images"):
        fit_gap_shift(None, None, None, images=[])


def test_isoclip_rank_and_default_cuts_need_no_svd(tiny_clip, monkeypatch):
    model, _, _ = tiny_clip
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: pytest.fail("no SVD needed for the rank"))
    assert isoclip_rank(model) == 32
    assert isoclip_cuts(model) == (2, 8)  # r // 16, r // 4
    assert isoclip_cuts(model, k_top=5) == (5, 8) and isoclip_cuts(model, 0, 0) == (0, 0)


def test_both_rivals_are_one_kind_of_derived_vector(tiny_clip, pixels):
    model, _, tokenizer = tiny_clip
    img = F.normalize(model.encode_image(pixels), dim=-1)
    txt = F.normalize(model.encode_text(tokenizer(TEXTS)), dim=-1)
    for transform in (IsoCLIPProjector.from_model(model, 1, 1), ModalityGapShift.fit(img, txt)):
        assert isinstance(transform, FeatureTransform)
        for modality, inputs, direct in (("image", pixels, transform.encode_images),
                                         ("text", tokenizer(TEXTS), transform.encode_texts)):
            vec = transform.vector(modality)
            assert type(vec) is TransformVector and vec.modality == modality and vec.dim == transform.dim
            torch.testing.assert_close(vec.compute(model, inputs), direct(model, inputs))
    with pytest.raises(TypeError):
        FeatureTransform()  # abstract: dim, encode_images and encode_texts are required


def test_derived_vectors_satisfy_the_store_protocol(tiny_clip):
    from crossgap_qdrant.store import DerivedVector

    model, _, _ = tiny_clip
    assert isinstance(IsoCLIPProjector.from_model(model).vector("image"), DerivedVector)
    assert isinstance(ModalityGapShift.fit(torch.ones(2, 4), -torch.ones(2, 4)).vector("text"), DerivedVector)
