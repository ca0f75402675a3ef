"""The rivals on tiny random models: IsoCLIP band and its published cuts, PCA projection, gap shift, hubness
(DBNorm) values, and the records that rebuild them; PCA and hubness against small reference implementations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from crossgap_qdrant.rivals import (
    PUBLISHED_CUTS,
    FeatureTransform,
    IsoCLIPProjector,
    ModalityGapShift,
    PCAProjector,
    TransformVector,
    bank_sample,
    bundled_class_names,
    cut_grid,
    fit_gap_shift,
    fit_pca_projector,
    hub_corrected,
    hub_values,
    image_pre_projection,
    isoclip_rank,
    principal_basis,
    published_cuts,
    text_pre_projection,
    transform_from_record,
    vector_from_record,
)
from crossgap_qdrant.store import DerivedVector

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


def test_gap_shift_is_a_query_side_map_and_rebuilds(tiny_clip, pixels):
    model, _, tokenizer = tiny_clip
    img = F.normalize(model.encode_image(pixels), dim=-1)
    shift = ModalityGapShift.fit(img, F.normalize(model.encode_text(tokenizer(TEXTS)), dim=-1))
    vec = shift.vector("image")
    assert vec.gallery == "native"  # the shifted query is compared with the native gallery
    again = vector_from_record(model, vec.record())
    torch.testing.assert_close(again.compute(model, pixels), vec.compute(model, pixels))
    assert again.gallery == "native" and again.modality == "image"


def test_gap_shift_as_derived_vector_and_fit(tiny_clip, pixels):
    model, preprocess, tokenizer = tiny_clip

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


def test_isoclip_rank_needs_no_svd(tiny_clip, monkeypatch):
    model, _, _ = tiny_clip
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: pytest.fail("no SVD needed for the rank"))
    assert isoclip_rank(model) == 32


@pytest.mark.parametrize("name, tag, cuts", [
    ("ViT-B-32", "openai", (150, 50)),
    ("ViT-B-32-quickgelu", "openai", (150, 50)),  # open_clip's name for the same OpenAI weights
    ("vit-b-32", "OpenAI", (150, 50)),
    ("ViT-B-16", "openai", (200, 50)),
    ("ViT-L-14", "openai", (250, 200)),
    ("ViT-B-32", "datacomp_xl_s13b_b90k", (50, 50)),
    ("ViT-B-16", "datacomp_xl_s13b_b90k", (100, 100)),
    ("PE-Core-B-16", "meta", (300, 50)),
    ("ViT-B-16-SigLIP2", "webli", (350, 50)),
])
def test_published_cuts_are_looked_up_by_name_and_tag(name, tag, cuts):
    assert published_cuts(name, tag) == cuts
    assert published_cuts(name, tag, modality="image") == cuts


@pytest.mark.parametrize("name, tag, modality", [
    ("ViT-B-32", "laion2b_s34b_b79k", "image"),  # same architecture, other weights: no published cuts
    ("ViT-B-32", "openai", "text"),  # the published table is for image->image retrieval
    ("ViT-B-32", None, "image"),
    (None, "openai", "image"),
    ("crossgap-demo-clip", "openclipart", "image"),
])
def test_no_published_cuts_are_guessed(name, tag, modality):
    assert published_cuts(name, tag, modality) is None


def test_published_table_matches_the_spec():
    assert len(PUBLISHED_CUTS) == 7 and all(t + b < 512 for t, b in PUBLISHED_CUTS.values())


def test_cut_grid_is_small_starts_uncut_and_leaves_directions():
    grid = cut_grid(512)
    assert grid[0] == (0, 0) and 4 <= len(grid) <= 12 and len(set(grid)) == len(grid)
    assert all(t + b < 512 for t, b in grid) and (51, 51) in grid and (256, 128) in grid
    assert all(t + b < 4 for t, b in cut_grid(4))


def test_isoclip_records_its_cuts_and_rebuilds(tiny_clip, pixels):
    model, _, _ = tiny_clip
    iso = IsoCLIPProjector.from_model(model, 3, 5, cuts_source="tuned")
    record = iso.vector("image").record()
    assert record == {"kind": "isoclip", "modality": "image", "k_top": 3, "k_bottom": 5, "rank": 32,
                      "cuts_source": "tuned"}
    again = vector_from_record(model, record)
    assert again.modality == "image" and again.transform.cuts_source == "tuned"
    torch.testing.assert_close(again.compute(model, pixels), iso.encode_images(model, pixels))
    with pytest.raises(ValueError, match="another model"):
        transform_from_record(model, {**record, "rank": 64})
    with pytest.raises(ValueError, match="unknown derived-vector kind"):
        transform_from_record(model, {"kind": "magic"})


# ------------------------------------------------------------------------------------------------ PCA
def _pca_reference(features: np.ndarray, k: int) -> np.ndarray:
    """Projection matrix onto the top-k eigenvectors of the covariance of the rows (textbook PCA)."""
    centred = features - features.mean(0)
    values, vectors = np.linalg.eigh(centred.T @ centred / (len(features) - 1))
    top = vectors[:, np.argsort(values)[::-1][:k]]
    return top @ top.T


def test_pca_matches_the_textbook_reference():
    rng = np.random.default_rng(0)
    texts = rng.normal(size=(40, 12)) * np.linspace(3, 0.1, 12)  # distinct variances: a unique top-k span
    basis = principal_basis(torch.tensor(texts, dtype=torch.float32), 5)
    assert basis.shape == (12, 5)
    torch.testing.assert_close(basis.T @ basis, torch.eye(5), atol=1e-5, rtol=0)
    projector = torch.tensor(_pca_reference(texts, 5), dtype=torch.float32)
    torch.testing.assert_close(basis @ basis.T, projector, atol=1e-5, rtol=0)
    # the transform: unit features projected onto the span, renormalised; the width stays E
    pca = PCAProjector.fit(torch.tensor(texts, dtype=torch.float32), k=5)
    x = torch.tensor(rng.normal(size=(7, 12)), dtype=torch.float32)
    expected = F.normalize(F.normalize(x, dim=-1) @ torch.tensor(_pca_reference(
        F.normalize(torch.tensor(texts), dim=-1).numpy(), 5), dtype=torch.float32), dim=-1)
    torch.testing.assert_close(pca.project(x), expected, atol=1e-5, rtol=0)
    assert PCAProjector.fit(torch.tensor(texts, dtype=torch.float32)).basis.shape == (12, 6)  # E // 2 default


def test_pca_on_a_model_records_its_vocabulary_and_rebuilds(tiny_clip, pixels):
    model, _, tokenizer = tiny_clip
    names = bundled_class_names()
    assert len(names) >= 300 and len(set(names)) == len(names) and all(n.strip() == n and n for n in names)
    pca = fit_pca_projector(model, tokenizer)
    assert pca.basis.shape == (32, 16) and pca.num_texts == len(names) and "bundled class names" in pca.vocabulary
    vec = pca.vector("image")
    out = vec.compute(model, pixels)
    native = F.normalize(model.encode_image(pixels), dim=-1)
    torch.testing.assert_close(out, pca.project(native), atol=1e-5, rtol=0)
    again = vector_from_record(model, vec.record())
    torch.testing.assert_close(again.transform.basis, pca.basis, atol=0, rtol=0)  # float32 bits survive
    assert again.transform.vocabulary == pca.vocabulary and again.gallery == "self"
    own = fit_pca_projector(model, tokenizer, TEXTS * 5, vocabulary="my captions", k=2)
    assert own.vocabulary == "my captions" and own.num_texts == 20
    with pytest.raises(ValueError, match="at most 3 principal directions"):
        fit_pca_projector(model, tokenizer, TEXTS)  # 4 texts cannot give 16 directions
    with pytest.raises(ValueError, match="non-empty vocabulary"):
        fit_pca_projector(model, tokenizer, ["  "])


# -------------------------------------------------------------------------------------------- hubness
def _dual_inverted_softmax(scores, query_bank_scores, gallery_bank_scores, t):
    """DBNorm's dual inverted softmax written out: [Q, G] scores, banks [B, G]."""
    e = np.exp(t * scores)
    return (e / np.exp(t * query_bank_scores).sum(0)) * (e / np.exp(t * gallery_bank_scores).sum(0))


def test_hub_values_rank_exactly_as_the_dual_inverted_softmax():
    rng = np.random.default_rng(1)
    unit = lambda n: F.normalize(torch.tensor(rng.normal(size=(n, 16)), dtype=torch.float32), dim=-1)  # noqa
    gallery, gallery_side_bank, query_side_bank, queries = unit(30), unit(25), unit(25), unit(6)
    t = 20.0
    hub = hub_values(gallery, query_side_bank, gallery_side_bank, temperature=t)
    d = lambda a, b: a.double() @ b.double().T  # noqa: E731
    scores = d(queries, gallery)
    corrected = hub_corrected(scores, hub)
    dis = _dual_inverted_softmax(scores.numpy(), d(query_side_bank, gallery).numpy(),
                                 d(gallery_side_bank, gallery).numpy(), t)
    # log(DIS) / 2t = score - hub + a constant (the banks' sizes): the same ranking, the same gaps
    offset = np.log(dis) / (2 * t) - corrected.numpy()
    np.testing.assert_allclose(offset, offset[0, 0], atol=1e-9)
    assert (np.argsort(-dis, axis=1) == torch.argsort(-corrected, dim=1).numpy()).all()
    # QB-Norm (query bank alone) is the single inverted softmax
    single = hub_values(gallery, query_side_bank, temperature=t)
    ref = np.log(np.exp(t * d(query_side_bank, gallery).numpy()).mean(0)) / t
    np.testing.assert_allclose(single.numpy(), ref, atol=1e-9)
    # the weight scales the correction
    torch.testing.assert_close(hub_corrected(scores, hub, 0.5), scores - 0.5 * hub.double()[None])


def test_an_item_is_never_in_its_own_banks():
    rng = np.random.default_rng(2)
    items = F.normalize(torch.tensor(rng.normal(size=(8, 6)), dtype=torch.float32), dim=-1)
    own = torch.arange(8)
    hub = hub_values(items, items, items, self_index=own, temperature=10.0, chunk=3)
    sims = (items.double() @ items.double().T).numpy()
    for g in range(8):
        others = np.delete(sims[:, g], g)
        expected = np.log(np.mean(np.exp(10.0 * others))) / 10.0  # both banks hold the same vectors here
        assert hub[g].item() == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match="only the item itself"):
        hub_values(items[:1], items[:1], self_index=torch.tensor([0]))
    with pytest.raises(ValueError, match="temperature"):
        hub_values(items, items, temperature=0.0)
    with pytest.raises(ValueError, match="same items"):
        hub_values(items, items, items[:3])


def test_bank_sample_is_deterministic():
    assert bank_sample(5, 10).tolist() == [0, 1, 2, 3, 4]
    a, b = bank_sample(100, 10, seed=3), bank_sample(100, 10, seed=3)
    assert a.tolist() == b.tolist() and a.tolist() == sorted(set(a.tolist())) and len(a) == 10


def test_both_rivals_are_one_kind_of_derived_vector(tiny_clip, pixels):
    model, _, tokenizer = tiny_clip
    img = F.normalize(model.encode_image(pixels), dim=-1)
    txt = F.normalize(model.encode_text(tokenizer(TEXTS)), dim=-1)
    for transform in (IsoCLIPProjector.from_model(model, 1, 1), ModalityGapShift.fit(img, txt),
                      PCAProjector.fit(txt.repeat(5, 1) + 0.01 * torch.randn(20, 32), k=4)):
        assert isinstance(transform, FeatureTransform)
        for modality, inputs, direct in (("image", pixels, transform.encode_images),
                                         ("text", tokenizer(TEXTS), transform.encode_texts)):
            vec = transform.vector(modality)
            assert type(vec) is TransformVector and vec.modality == modality and vec.dim == transform.dim
            torch.testing.assert_close(vec.compute(model, inputs), direct(model, inputs))
    with pytest.raises(TypeError):
        FeatureTransform()  # abstract: dim, encode_images and encode_texts are required


def test_derived_vectors_satisfy_the_store_protocol(tiny_clip):
    model, _, _ = tiny_clip
    assert isinstance(IsoCLIPProjector.from_model(model).vector("image"), DerivedVector)
    assert isinstance(ModalityGapShift.fit(torch.ones(2, 4), -torch.ones(2, 4)).vector("text"), DerivedVector)
    assert isinstance(PCAProjector(torch.eye(4)[:, :2]).vector("image"), DerivedVector)
