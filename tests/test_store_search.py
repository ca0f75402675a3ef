"""Search on both engines: the modes, cross-modal search, point-id queries, filters, batches, errors."""

import copy
import uuid

import pytest
import torch
from PIL import Image
from qdrant_client import models

from crossgap_qdrant.models import ClipModel, encode_images, encode_texts
from crossgap_qdrant.store import PointNotFoundError, VectorsNotStoredError
from tests.support.store import ENGINES, Stores, brute_force, images, stored_vectors

TEXTS = ["a cat", "a dog on grass", "a red car", "two cats", "a blue car", "a dog"]


@pytest.fixture(scope="module", params=ENGINES)
def gallery(request, tiny_clip, tmp_path_factory):
    """A store holding 12 images (half with payload split=a) and 6 texts, on each engine."""
    stores = Stores(request.param, tmp_path_factory.mktemp(request.param), tiny_clip)
    store = stores.make()
    pil = images(12, seed=3)
    report = store.ingest_images(pil, payloads=[{"split": "ab"[i % 2]} for i in range(12)], progress=False)
    text_report = store.ingest_texts(TEXTS, progress=False)
    yield store, pil, report.ids, TEXTS, text_report.ids
    stores.close()


def ids_of(hits):
    return [str(h.id) for h in hits]


def test_modes_search_the_right_vectors(gallery):
    store, pil, ids, _, _ = gallery
    query = encode_images(store.clip.model, store.clip.preprocess, pil[:1])[0]
    oti = torch.tensor(stored_vectors(store, [ids[0]], "image_oti")[0])
    expected = {
        "native": brute_force(store, query, "image", exclude=ids[0]),
        "gallery_inverted": brute_force(store, query, "image_oti", exclude=ids[0]),
        # the query's OTI equals its stored one: inversion is seeded by the content id
        "query_inverted": brute_force(store, oti, "image", exclude=ids[0]),
    }
    for mode, ranking in expected.items():
        hits = store.search_images(pil[0], mode=mode, limit=5)
        assert ids_of(hits) == ranking[:5], mode
        assert ids_of(store.search_images(image=pil[0], mode=mode, limit=5)) == ranking[:5]
    assert expected["native"][:5] != expected["gallery_inverted"][:5]
    assert ids_of(store.search_images(pil[0], limit=5)) == expected["gallery_inverted"][:5]  # the default mode


def test_fused_mode_is_reciprocal_rank_fusion_of_the_two_routes(gallery):
    store, pil, ids, _, _ = gallery
    hits = store.search_images(pil[1], mode="fused", limit=4, prefetch_limit=6)
    query = encode_images(store.clip.model, store.clip.preprocess, pil[1:2])[0]
    oti = torch.tensor(stored_vectors(store, [ids[1]], "image_oti")[0])
    routes = [brute_force(store, query, "image_oti", ids[1])[:6], brute_force(store, oti, "image", ids[1])[:6]]
    scores = {}
    for ranking in routes:
        for rank, pid in enumerate(ranking):
            scores[pid] = scores.get(pid, 0) + 1 / (rank + 1)
    best = sorted(scores, key=lambda p: -scores[p])
    assert ids_of(hits)[0] == best[0] and set(ids_of(hits)) <= set(scores)


def test_point_id_queries_read_stored_vectors_and_compute_nothing(gallery, monkeypatch):
    store, pil, ids, _, _ = gallery
    by_image = {mode: ids_of(store.search_images(pil[2], mode=mode, limit=4)) for mode in
                ("native", "gallery_inverted", "query_inverted", "fused")}

    def forbidden(*args, **kwargs):
        raise AssertionError("a point-id query recomputed something")

    monkeypatch.setattr(store.clip.model, "encode_image", forbidden)
    monkeypatch.setattr(store.encoder, "invert", forbidden)
    for mode, expected in by_image.items():
        hits = store.search_images(uuid.UUID(ids[2]), mode=mode, limit=4)
        assert ids_of(hits) == expected, mode
        assert ids[2] not in ids_of(hits)
        assert ids_of(store.search_images(image=ids[2], mode=mode, limit=4)) == expected


def test_exclude_query_false_keeps_the_query_item(gallery):
    store, pil, ids, _, _ = gallery
    for query in (pil[3], ids[3]):
        hits = store.search_images(query, mode="native", limit=2, exclude_query=False)
        assert str(hits[0].id) == ids[3] and hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_filters_pass_through(gallery):
    store, pil, ids, _, _ = gallery
    only_a = models.Filter(must=[models.FieldCondition(key="split", match=models.MatchValue(value="a"))])
    for mode in ("native", "gallery_inverted", "fused"):
        hits = store.search_images(pil[0], mode=mode, limit=20, query_filter=only_a)
        assert {h.payload["split"] for h in hits} == {"a"} and ids[0] not in ids_of(hits)
        assert len(hits) == 5, mode
    hits = store.search_images(ids[0], mode="gallery_inverted", limit=20, query_filter=only_a, exclude_query=False)
    assert len(hits) == 6 and ids[0] in ids_of(hits)


def test_batch_queries_equal_single_queries(gallery):
    store, pil, ids, _, _ = gallery
    features = encode_images(store.clip.model, store.clip.preprocess, pil[:3])
    results = store.search_images(features, mode="gallery_inverted", limit=3)
    assert len(results) == 3
    singles = [ids_of(store.search_images(f, mode="gallery_inverted", limit=3)) for f in features]
    assert [ids_of(r) for r in results] == singles
    mixed = store.search_images([pil[0], ids[1]], mode="query_inverted", limit=3)
    assert len(mixed) == 2 and ids[1] not in ids_of(mixed[1])


def test_text_search_modes(gallery):
    store, _, image_ids, texts, ids = gallery
    query = encode_texts(store.clip.model, store.clip.tokenizer, ["a cat"])[0]
    hits = store.search_texts("a cat", mode="gallery_inverted", limit=3)
    assert ids_of(hits) == brute_force(store, query, "text_ovi", exclude=ids[0])[:3]
    assert all(h.payload["modality"] == "text" for h in hits)
    ovi = torch.tensor(stored_vectors(store, [ids[0]], "text_ovi")[0])
    hits = store.search_texts(text="a cat", mode="query_inverted", limit=3)
    assert ids_of(hits) == brute_force(store, ovi, "text", exclude=ids[0])[:3]
    by_id = store.search_texts(ids[0], mode="query_inverted", limit=3)  # the stored OVI instead of a fresh one
    assert [h.score for h in by_id] == pytest.approx([h.score for h in hits], abs=1e-5)  # equal up to ties
    fused = store.search_texts("a cat", mode="fused", limit=3)
    assert len(fused) == 3 and not set(ids_of(fused)) & set(image_ids)


def test_cross_modal_search_is_clip_search_on_native_vectors(gallery):
    store, pil, image_ids, texts, text_ids = gallery
    text_feature = encode_texts(store.clip.model, store.clip.tokenizer, ["a red car"])[0]
    hits = store.search_images(text="a red car", limit=4)
    assert ids_of(hits) == brute_force(store, text_feature, "image")[:4]
    assert all(h.payload["modality"] == "image" for h in hits)
    image_feature = encode_images(store.clip.model, store.clip.preprocess, pil[:1])[0]
    hits = store.search_texts(image=pil[0], limit=3)
    assert ids_of(hits) == brute_force(store, image_feature, "text")[:3]
    assert all(h.payload["modality"] == "text" for h in hits)
    assert ids_of(store.search_texts(image=image_ids[0], limit=3)) == ids_of(hits)  # a stored image as query
    # a stored text as a text->image query: a uuid.UUID names a point even under text= (a string is a text)
    by_point = store.search_images(text=uuid.UUID(text_ids[2]), limit=4)
    assert ids_of(by_point) == ids_of(store.search_images(text="a red car", limit=4))
    assert store.modality_of(text_ids[2]) == "text" and store.modality_of(image_ids[0]) == "image"
    with pytest.raises(PointNotFoundError, match="not in collection"):
        store.modality_of(uuid.uuid4())
    with pytest.raises(ValueError, match="mode must be 'native'"):
        store.search_images(text="a red car", mode="gallery_inverted")
    with pytest.raises(TypeError, match="exactly one of"):
        store.search_images(pil[0], text="a car")


def test_search_errors_name_the_problem(gallery):
    store, pil, ids, _, _ = gallery
    with pytest.raises(ValueError, match="mode must be one of"):
        store.search_images(pil[0], mode="intermodal")
    with pytest.raises(PointNotFoundError, match="not in collection"):
        store.search_images(str(uuid.uuid4()), mode="native")
    with pytest.raises(ValueError, match="NaN"):
        store.search_images(torch.full((32,), float("nan")))
    with pytest.raises(FileNotFoundError, match="neither an image file nor a point id"):
        store.search_images("no/such/file.png")
    for limit in (0, 1.5, True):
        with pytest.raises(ValueError, match="limit must be an integer"):
            store.search_images(pil[0], limit=limit)
    with pytest.raises(ValueError, match="empty text"):
        store.search_images(text="   ")


def test_a_mode_without_its_vectors_names_the_fix(tiny_clip, tmp_path):
    for engine in ENGINES:
        stores = Stores(engine, tmp_path / engine, tiny_clip)
        store = stores.make("partial")
        pil = images(3)
        report = store.ingest_images(pil, invert=False, progress=False)
        with pytest.raises(PointNotFoundError, match=r"no 'image_oti' vector.*invert_missing"):
            store.search_images(report.ids[0], mode="query_inverted")
        with pytest.raises(VectorsNotStoredError, match=r"image_oti.*invert_missing"):
            store.search_images(pil[0])  # default mode: gallery_inverted
        with pytest.raises(VectorsNotStoredError, match="holds no texts"):
            store.search_texts("a cat", mode="native")
        with pytest.raises(VectorsNotStoredError, match="holds no texts"):
            store.search_texts("a cat")  # the default mode, on a collection without any text
        assert len(store.search_images(pil[0], mode="native", limit=2)) == 2
        stores.close()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_store_on_cuda_equals_cpu(tiny_clip, tmp_path):
    gpu = ClipModel(copy.deepcopy(tiny_clip.model).cuda(), tiny_clip.preprocess, tiny_clip.tokenizer, tiny_clip.name)
    pil = images(6, seed=9)
    results = {}
    for name, clip in (("cpu", tiny_clip), ("cuda", gpu)):
        stores = Stores("edge", tmp_path / name, clip)
        store = stores.make()
        ids = store.ingest_images(pil, progress=False).ids
        store.ingest_texts(TEXTS, progress=False)
        results[name] = (torch.tensor(stored_vectors(store, ids, "image_oti")),
                         ids_of(store.search_images(pil[0], mode="query_inverted", limit=3)),
                         ids_of(store.search_images(text="a red car", limit=3)))
        stores.close()
    torch.testing.assert_close(results["cuda"][0], results["cpu"][0], atol=1e-4, rtol=1e-4)
    assert results["cuda"][1:] == results["cpu"][1:]


def test_the_query_is_left_out_of_its_own_results_whatever_form_it_takes(stores, tmp_path):
    pil = images(4, seed=5)
    paths = []
    for i, image in enumerate(pil):
        paths.append(str(tmp_path / f"{i}.png"))
        image.save(paths[-1])
    store = stores.make()
    from_files = store.ingest_images(paths[:2], invert=False, progress=False).ids  # stored from files
    from_pixels = store.ingest_images([Image.open(p) for p in paths[2:]], invert=False, progress=False).ids
    for i, own in enumerate(from_files + from_pixels):
        with Image.open(paths[i]) as opened:
            for query in (paths[i], opened, opened.convert("RGB") if i >= 2 else paths[i], own):
                hits = store.search_images(query, mode="native", limit=4)
                assert str(own) not in ids_of(hits), (i, type(query).__name__)
                assert len(hits) == 3
