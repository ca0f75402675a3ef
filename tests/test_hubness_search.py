"""Hubness correction in the store: statistics fitted over a collection and applied at query time, in the
engine as a Formula query and on the client, which must rank alike; rival vectors rebuilt from the metadata."""

import pytest
import torch
import torch.nn.functional as F
from qdrant_client import models

from crossgap_qdrant.rivals import IsoCLIPProjector, ModalityGapShift, hub_values
from crossgap_qdrant.store.edge_filters import edge_query
from crossgap_qdrant.store.errors import UntranslatableError
from tests.support.store import ENGINES, Stores, all_records, images


@pytest.fixture(scope="module", params=ENGINES)
def hub_store(request, tiny_clip, tmp_path_factory):
    """A store of 16 images with native and OTI vectors and an IsoCLIP vector, on each engine."""
    stores = Stores(request.param, tmp_path_factory.mktemp(request.param), tiny_clip)
    iso = IsoCLIPProjector.from_model(tiny_clip.model, 2, 4)
    store = stores.make(derived_vectors={"image_isoclip": iso.vector("image")})
    pil = images(16, seed=5)
    report = store.ingest_images(pil, payloads=[{"half": i % 2} for i in range(16)], progress=False)
    yield stores, store, pil, report.ids
    stores.close()


def _reference(store, query_name, gallery_name, query_vector, exclude, temperature=20.0):
    """Ids and corrected scores by brute force: every stored point is in the banks and the gallery."""
    records = all_records(store, [query_name, gallery_name])
    q_bank = torch.tensor([r.vector[query_name] for r in records])
    g_bank = torch.tensor([r.vector[gallery_name] for r in records])
    hub = hub_values(g_bank, q_bank, None if query_name == gallery_name else g_bank,
                     self_index=torch.arange(len(records)), temperature=temperature)
    scores = (F.normalize(g_bank, dim=-1).double() @ F.normalize(query_vector, dim=-1).double()) - hub
    order = [i for i in scores.argsort(descending=True).tolist() if str(records[i].id) != str(exclude)]
    return [str(records[i].id) for i in order], [float(scores[i]) for i in order]


@pytest.mark.parametrize("mode", ["native", "gallery_inverted", "query_inverted", "image_isoclip"])
def test_formula_path_equals_client_path_and_the_reference(hub_store, mode):
    _, store, pil, ids = hub_store
    fitted = store.fit_hubness("image", mode, temperature=20.0)
    assert fitted["points"] == 16 and fitted["bank_size"] == 16 and fitted["key"] == f"hub_image_{mode}"
    assert store.searcher.server_rescoring  # both engines run Formula queries
    server = store.search_images(ids[0], mode=mode, limit=8, hubness=True, prefetch_limit=16)
    store.searcher.server_rescoring = False
    try:
        client = store.search_images(ids[0], mode=mode, limit=8, hubness=True, prefetch_limit=16)
    finally:
        store.searcher.server_rescoring = True
    assert [str(p.id) for p in server] == [str(p.id) for p in client]
    assert [p.score for p in server] == pytest.approx([p.score for p in client], abs=1e-5)
    query_name, gallery_name = fitted["vectors"]
    query_vector = torch.tensor(store.collection.retrieve([ids[0]], with_vectors=[query_name])[0].vector[query_name])
    ranking, scores = _reference(store, query_name, gallery_name, query_vector, ids[0])
    assert [str(p.id) for p in server] == ranking[:8]
    assert [p.score for p in server] == pytest.approx(scores[:8], abs=1e-5)
    plain = store.search_images(ids[0], mode=mode, limit=8, hubness=False, prefetch_limit=16)
    assert [p.score for p in plain] != pytest.approx([p.score for p in server], abs=1e-3)  # it does re-score


def test_payload_selection_and_filters_survive_the_client_path(hub_store):
    _, store, _, ids = hub_store
    store.fit_hubness("image", "native")
    only_half = models.Filter(must=[models.FieldCondition(key="half", match=models.MatchValue(value=1))])
    for server in (True, False):
        store.searcher.server_rescoring = server
        try:
            hits = store.search_images(ids[0], mode="native", limit=3, hubness=True, query_filter=only_half,
                                       with_payload=["half"])
            bare = store.search_images(ids[0], mode="native", limit=3, hubness=True, with_payload=False)
        finally:
            store.searcher.server_rescoring = True
        assert all(h.payload == {"half": 1} for h in hits)
        assert all(h.payload is None for h in bare)


def test_recorded_default_turns_hubness_on_and_new_points_take_the_mean(hub_store):
    stores, store, pil, ids = hub_store
    fitted = store.fit_hubness("image", "gallery_inverted")
    store.set_default_mode("image", "gallery_inverted", hubness=True)
    assert store.default_mode("image") == "gallery_inverted" and store.default_hubness("image")
    default = store.search_images(ids[0], limit=5)
    explicit = store.search_images(ids[0], mode="gallery_inverted", hubness=True, limit=5)
    assert [(p.id, p.score) for p in default] == [(p.id, p.score) for p in explicit]
    assert store.hub_correction("image", "native") is None  # another mode: not corrected by default
    # a reopened store reads the recorded default
    again = stores.make(derived_vectors=store.derived)
    assert [p.id for p in again.search_images(ids[0], limit=5)] == [p.id for p in default]
    # a point ingested after the fit scores with the mean hub value
    new = again.ingest_images(images(1, seed=99), progress=False).ids[0]
    record = again.collection.retrieve([new], with_payload=True)[0]
    assert fitted["key"] not in (record.payload or {})
    assert again.hub_correction("image", "gallery_inverted").default == pytest.approx(fitted["default"])
    again.set_default_mode("image", "gallery_inverted")
    assert not again.default_hubness("image")


def test_hubness_errors(hub_store):
    stores, _, pil, ids = hub_store
    store = stores.make()  # an earlier test's reopening closed the fixture's store
    with pytest.raises(ValueError, match="no hubness statistics"):
        store.search_images(ids[0], mode="fused", hubness=True)
    with pytest.raises(ValueError, match="no hubness statistics"):
        store.set_default_mode("image", "fused", hubness=True)
    with pytest.raises(ValueError, match="image->image"):
        store.search_images(text="a cat", hubness=True)
    with pytest.raises(ValueError, match="does not compare one query vector"):
        store.fit_hubness("image", "fused")


def test_rival_vectors_are_rebuilt_from_the_collection_metadata(hub_store, tiny_clip):
    stores, store, pil, ids = hub_store
    reopened = stores.make()  # no derived_vectors given
    vec = reopened.encoder.derived["image_isoclip"]
    assert (vec.transform.k_top, vec.transform.k_bottom) == (2, 4)
    hits = reopened.search_images(pil[3], mode="image_isoclip", limit=3)
    assert hits and str(hits[0].id) != str(ids[3])
    info = reopened.info()["derived_vectors"]["image_isoclip"]
    assert info["transform"]["kind"] == "isoclip" and info["transform"]["cuts_source"] == "given"


def test_query_side_map_searches_the_native_gallery(tiny_clip, tmp_path):
    stores = Stores("edge", tmp_path, tiny_clip)
    try:
        shift = ModalityGapShift.fit(torch.randn(5, 32), torch.randn(5, 32))
        store = stores.make(derived_vectors={"image_gap_shift": shift.vector("image")})
        pil = images(6, seed=1)
        ids = store.ingest_images(pil, progress=False, invert=False).ids
        hits = store.search_images(pil[0], mode="image_gap_shift", limit=5)
        query = shift.vector("image").compute(tiny_clip.model, store.encoder.pixels(pil[0])[None])[0]
        records = all_records(store, ["image"])
        native = torch.tensor([r.vector["image"] for r in records])
        order = (F.normalize(native, dim=-1) @ query).argsort(descending=True).tolist()
        expected = [str(records[i].id) for i in order if str(records[i].id) != str(ids[0])]
        assert [str(h.id) for h in hits] == expected[:5]
        assert store.info()["derived_vectors"]["image_gap_shift"]["gallery"] == "native"
    finally:
        stores.close()


def test_edge_translates_formulas_and_refuses_what_it_cannot_run():
    request = models.QueryRequest(
        prefetch=[models.Prefetch(query=[0.1, 0.2], using="image", limit=5)],
        query=models.FormulaQuery(formula=models.SumExpression(sum=[
            "$score", models.MultExpression(mult=[-0.5, "hub"]),
            models.DivExpression(div=models.DivParams(left=1.0, right="x", by_zero_default=0.0))]),
            defaults={"hub": 0.3}), limit=3)
    assert "Formula" in repr(edge_query(request).query)
    bad = models.QueryRequest(prefetch=request.prefetch, limit=3, query=models.FormulaQuery(
        formula=models.SumExpression(sum=["$score", models.GeoDistance(geo_distance=models.GeoDistanceParams(
            origin=models.GeoPoint(lon=0, lat=0), to="loc"))])))
    with pytest.raises(UntranslatableError, match="GeoDistance"):
        edge_query(bad)
