"""CrossModalStore: schema, ingestion (idempotent, resumable, fault tolerant), inter-modal search, server options."""

import json
import os
import signal
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException

from crossgap_qdrant.inversion import OTIConfig, OVIConfig
from crossgap_qdrant.models import encode_images, encode_texts
from crossgap_qdrant.store import (
    CrossModalStore,
    PointNotFoundError,
    RetryPolicy,
    SchemaMismatchError,
    StoreLockedError,
    VectorNames,
    features_id,
    image_bytes_id,
    text_id,
)

# qdrant-client's version check of the unreachable-server test may warn from a later test
pytestmark = pytest.mark.filterwarnings("ignore:Failed to obtain server version")

MODEL_ID = "test-tiny-clip"
FAST = {"oti_config": OTIConfig(steps=3), "ovi_config": OVIConfig(steps=3)}
HERE = os.path.dirname(os.path.abspath(__file__))


class RecordingClient:
    """A QdrantClient (":memory:") that records every call made to it: the requests a server would get."""

    def __init__(self, inner=None):
        self.inner = inner or QdrantClient(":memory:")
        self.calls = []

    @property
    def init_options(self):
        return {"url": "http://recorded:6333"}

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return attr(*args, **kwargs)

        return record

    def named(self, name):
        return [kwargs for n, _, kwargs in self.calls if n == name]


class FlakyClient(RecordingClient):
    """Fails the first ``failures`` calls of ``method`` with ``error``, then behaves."""

    def __init__(self, method, failures, error):
        super().__init__()
        self.method, self.failures, self.error = method, failures, error

    def __getattr__(self, name):
        fn = super().__getattr__(name)
        if name != self.method:
            return fn

        def flaky(*args, **kwargs):
            if self.failures > 0:
                self.failures -= 1
                self.calls.append((name, args, kwargs))
                raise self.error
            return fn(*args, **kwargs)

        return flaky


def make_store(tiny_clip, client=None, name="gallery", **kwargs):
    model, preprocess, tokenizer = tiny_clip
    options = {**FAST, **kwargs}
    return CrossModalStore(client or QdrantClient(":memory:"), name, model, tokenizer, preprocess,
                           model_id=options.pop("model_id", MODEL_ID), **options)


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


def unit(n, dim=32, seed=0):
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def stored_vectors(store, ids, name):
    records = store.client.retrieve(store.collection_name, ids, with_vectors=[name])
    by_id = {str(r.id): r.vector.get(name) for r in records}
    return [by_id.get(str(i)) for i in ids]


# ---------------------------------------------------------------------------------------------- schema
def test_collection_created_with_named_vectors_and_model_metadata(tiny_clip):
    store = make_store(tiny_clip)
    info = store.client.get_collection("gallery")
    vectors = info.config.params.vectors
    assert set(vectors) == {"image", "image_oti", "text", "text_ovi"}
    assert all(v.size == 32 and v.distance == models.Distance.COSINE for v in vectors.values())
    assert info.config.metadata["crossgap"]["model_id"] == MODEL_ID
    summary = store.info()
    assert summary["model_id"] == MODEL_ID and summary["points"] == 0
    assert summary["vectors"]["image_oti"] == {"size": 32, "distance": "Cosine", "points": 0}


def test_collection_of_another_model_is_refused(tiny_clip):
    client = QdrantClient(":memory:")
    make_store(tiny_clip, client)
    with pytest.raises(SchemaMismatchError, match=r"ViT-B-32/openai.*gallery|gallery.*ViT-B-32/openai") as err:
        make_store(tiny_clip, client, model_id="ViT-B-32/openai")
    assert MODEL_ID in str(err.value)


@pytest.mark.parametrize("size, distance, match", [(16, models.Distance.COSINE, "size 16"),
                                                   (32, models.Distance.DOT, "Dot")])
def test_collection_with_wrong_vector_is_refused(tiny_clip, size, distance, match):
    client = QdrantClient(":memory:")
    client.create_collection("gallery", vectors_config={"image": models.VectorParams(size=size, distance=distance)})
    with pytest.raises(SchemaMismatchError, match=match):
        make_store(tiny_clip, client)


def test_unnamed_vector_collection_is_refused(tiny_clip):
    client = QdrantClient(":memory:")
    client.create_collection("gallery", vectors_config=models.VectorParams(size=32, distance=models.Distance.COSINE))
    with pytest.raises(SchemaMismatchError, match="unnamed"):
        make_store(tiny_clip, client)


def test_vector_names_are_configurable(tiny_clip):
    names = VectorNames(image="img", image_oti="img_t", text="txt", text_ovi="txt_i")
    store = make_store(tiny_clip, vector_names=names)
    report = store.ingest_images(unit(3), progress=False)
    assert set(store.client.get_collection("gallery").config.params.vectors) == {"img", "img_t", "txt", "txt_i"}
    assert all(v is not None for v in stored_vectors(store, report.ids, "img_t"))


# ------------------------------------------------------------------------------------------- ingestion
def test_folder_ingestion_skips_corrupt_files_and_keeps_the_rest(tiny_clip, tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    paths = [tmp_path / "a.png", tmp_path / "sub" / "b.jpg", tmp_path / "sub" / "deeper" / "c.PNG"]
    for path, image in zip(paths, images(3)):
        image.save(path, format="PNG" if path.suffix.lower() == ".png" else "JPEG")
    (tmp_path / "sub" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "notes.txt").write_text("not an image")
    store = make_store(tiny_clip)
    report = store.ingest_images(tmp_path, payloads=None, progress=False)
    assert report.inserted == 3 and report.inverted == 3
    assert [os.path.basename(item) for item, _ in report.failed] == ["broken.jpg"]
    assert "unreadable image" in report.failed[0][1]
    assert store.count() == 3
    expected = {image_bytes_id(p.read_bytes()): str(p) for p in paths}
    records = store.client.retrieve("gallery", list(expected), with_vectors=True)
    assert {str(r.id): r.payload["source"] for r in records} == expected
    assert all(set(r.vector) == {"image", "image_oti"} for r in records)
    # the stored native vectors are the encoder's
    native = torch.tensor([r.vector["image"] for r in sorted(records, key=lambda r: r.payload["source"])])
    reference = encode_images(tiny_clip[0], tiny_clip[1], sorted(str(p) for p in paths))
    torch.testing.assert_close(native, reference, atol=1e-5, rtol=1e-5)
    assert report.seconds_inversion > 0 and report.seconds_database > 0 and report.seconds_encoding > 0


def test_unreadable_path_is_reported(tiny_clip, tmp_path):
    good = tmp_path / "good.png"
    images(1)[0].save(good)
    store = make_store(tiny_clip)
    report = store.ingest_images([str(good), str(tmp_path / "missing.png")], progress=False)
    assert report.inserted == 1 and report.ids[1] is None
    assert report.failed[0][0].endswith("missing.png") and "FileNotFoundError" in report.failed[0][1]


def test_rerun_is_idempotent_and_ids_come_from_content(tiny_clip):
    store = make_store(tiny_clip)
    pil = images(4)
    first = store.ingest_images(pil + [pil[0]], payloads=[{"k": i} for i in range(5)], progress=False)
    assert first.inserted == 4 and first.duplicates == 1 and first.ids[4] == first.ids[0]
    again = store.ingest_images(pil, progress=False)
    assert (again.inserted, again.skipped_existing, again.inverted) == (0, 4, 0)
    assert again.ids == first.ids[:4] and store.count() == 4
    assert store.client.retrieve("gallery", [first.ids[2]])[0].payload == {"modality": "image", "k": 2}


def test_resume_inverts_only_what_lacks_the_inverted_vector(tiny_clip):
    store = make_store(tiny_clip)
    features = unit(10)
    store.ingest_images(features[:6], progress=False)  # complete
    store.ingest_images(features[6:], invert=False, progress=False)  # native only, as after a crash
    inverted_rows = []
    invert = store._invert
    store._invert = lambda modality, feats, pids, progress: inverted_rows.append(len(pids)) or invert(
        modality, feats, pids, progress)
    report = store.ingest_images(features, batch_size=4, progress=False)
    assert sum(inverted_rows) == 4 and report.inverted == 4
    assert (report.inserted, report.skipped_existing) == (0, 6)
    assert all(v is not None for v in stored_vectors(store, report.ids, "image_oti"))


def test_inverted_vector_does_not_depend_on_batching(tiny_clip):
    features = unit(6)
    a = make_store(tiny_clip)
    b = make_store(tiny_clip)
    ra = a.ingest_images(features, batch_size=6, progress=False)
    b.ingest_images(features[3:], batch_size=2, progress=False)
    rb = b.ingest_images(features, batch_size=4, progress=False)
    assert ra.ids == rb.ids
    va = torch.tensor(stored_vectors(a, ra.ids, "image_oti"))
    vb = torch.tensor(stored_vectors(b, rb.ids, "image_oti"))
    torch.testing.assert_close(va, vb, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(va, torch.tensor(stored_vectors(a, ra.ids, "image")), atol=1e-2)


@pytest.mark.parametrize("bad, match", [
    ("nan", "NaN or inf"), ("inf", "NaN or inf"), ("dim", r"\[N, 32\]"), ("zero", "all-zero"),
])
def test_bad_features_are_refused_before_anything_is_written(tiny_clip, bad, match):
    store = make_store(tiny_clip)
    features = unit(8)
    if bad == "nan":
        features[5, 3] = float("nan")
    elif bad == "inf":
        features[7, 0] = float("inf")
    elif bad == "dim":
        features = unit(8, dim=31)
    else:
        features[2] = 0
    with pytest.raises(ValueError, match=match):
        store.ingest_images(features, batch_size=2, progress=False)
    with pytest.raises(ValueError, match=match):
        store.ingest_texts(unit(8), inverted_features=features, batch_size=2, progress=False)
    assert store.count() == 0


def test_mismatched_payloads_and_bad_ids_are_refused(tiny_clip):
    store = make_store(tiny_clip)
    with pytest.raises(ValueError, match="2 payloads for 3"):
        store.ingest_images(unit(3), payloads=[{}, {}], progress=False)
    with pytest.raises(ValueError, match="invalid point id"):
        store.ingest_images(unit(2), ids=[1, "not-a-uuid"], progress=False)
    assert store.count() == 0


def test_given_ids_and_precomputed_inverted_vectors(tiny_clip):
    store = make_store(tiny_clip)
    store._invert = None  # must not run
    pid = uuid.uuid4()
    report = store.ingest_texts(unit(2), ids=[7, pid], inverted_features=unit(2, seed=5), progress=False)
    assert report.ids == [7, str(pid)] and report.inverted == 2
    torch.testing.assert_close(torch.tensor(stored_vectors(store, [7], "text_ovi")[0]), unit(2, seed=5)[0])


def test_texts_from_a_file_and_a_list(tiny_clip, tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("a photo of a cat\n\n  \na red car\n", encoding="utf-8")
    store = make_store(tiny_clip)
    report = store.ingest_texts(path, progress=False)
    assert report.inserted == 2 and report.ids == [text_id("a photo of a cat"), text_id("a red car")]
    record = store.client.retrieve("gallery", [report.ids[1]], with_vectors=True)[0]
    assert record.payload == {"modality": "text", "text": "a red car", "source": str(path), "line": 4}
    assert set(record.vector) == {"text", "text_ovi"}
    torch.testing.assert_close(torch.tensor(record.vector["text"]),
                               encode_texts(tiny_clip[0], tiny_clip[2], ["a red car"])[0], atol=1e-5, rtol=1e-5)
    listed = store.ingest_texts(["a red car", "", "a dog"], progress=False)
    assert (listed.inserted, listed.skipped_existing) == (1, 1)
    assert listed.failed == [("", "ValueError: empty text")]
    with pytest.raises(FileNotFoundError, match="list of strings"):
        store.ingest_texts("a single string that is no file", progress=False)


def test_backfill_of_a_collection_with_existing_clip_vectors(tiny_clip):
    model, preprocess, _ = tiny_clip
    client = QdrantClient(":memory:")
    client.create_collection("legacy", vectors_config={
        "clip": models.VectorParams(size=32, distance=models.Distance.COSINE)})
    native = encode_images(model, preprocess, images(5))
    client.upsert("legacy", [models.PointStruct(id=i, vector={"clip": v.tolist()}, payload={"n": i})
                             for i, v in enumerate(native)])
    store = make_store(tiny_clip, client, name="legacy", vector_names=VectorNames(image="clip"))
    assert set(client.get_collection("legacy").config.params.vectors) == {"clip", "image_oti", "text", "text_ovi"}
    assert client.get_collection("legacy").config.metadata["crossgap"]["model_id"] == MODEL_ID
    report = store.invert_missing("image", batch_size=2, progress=False)
    assert report.inverted == 5 and sorted(report.ids) == list(range(5))
    records = client.retrieve("legacy", list(range(5)), with_vectors=True)
    assert all(set(r.vector) == {"clip", "image_oti"} and r.payload == {"n": r.id} for r in records)
    torch.testing.assert_close(torch.tensor([r.vector["clip"] for r in records]), native, atol=1e-5, rtol=1e-5)
    assert store.invert_missing("image", progress=False).inverted == 0


# ----------------------------------------------------------------------------------- derived vectors
class PixelMean:
    """A derived image vector: a fixed projection of the per-channel pixel means (dim 4)."""

    modality = "image"
    dim = 4

    def compute(self, model, inputs):
        means = inputs.float().mean(dim=(2, 3))  # [B, 3]
        return torch.cat([means, torch.ones(len(means), 1)], dim=1)


class TokenCount:
    modality = "text"
    dim = 2

    def compute(self, model, inputs):
        n = (inputs != 0).sum(dim=1, keepdim=True).float()
        return torch.cat([n, torch.ones_like(n)], dim=1)


def test_derived_vectors_are_filled_from_raw_inputs_and_searchable(tiny_clip):
    store = make_store(tiny_clip, derived_vectors={"pixel_mean": PixelMean(), "tokens": TokenCount()})
    vectors = store.client.get_collection("gallery").config.params.vectors
    assert vectors["pixel_mean"].size == 4 and vectors["tokens"].size == 2
    pil = images(4)
    first = store.ingest_images(pil[:2], progress=False)
    pixels = torch.stack([tiny_clip[1](im) for im in pil[:2]])
    expected = F.normalize(PixelMean().compute(None, pixels), dim=-1)
    torch.testing.assert_close(torch.tensor(stored_vectors(store, first.ids, "pixel_mean")), expected)
    text = store.ingest_texts(["one two three"], progress=False)
    assert stored_vectors(store, text.ids, "tokens")[0] is not None
    # from features there are no raw inputs: the derived vector is left out, and filled by a later raw ingestion
    native = encode_images(tiny_clip[0], tiny_clip[1], pil[2:])
    from_features = store.ingest_images(native, ids=[11, 12], progress=False)
    assert stored_vectors(store, [11, 12], "pixel_mean") == [None, None]
    later = store.ingest_images(pil[2:], ids=[11, 12], progress=False)
    assert later.inverted == 0 and later.inserted == 0 and from_features.inverted == 2
    assert all(v is not None for v in stored_vectors(store, [11, 12], "pixel_mean"))
    hits = store.search_images(pil[0], mode="pixel_mean", limit=3, exclude_query=False)
    assert str(hits[0].id) == first.ids[0] and hits[0].score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="raw input"):
        store.search_images(native[0], mode="pixel_mean")


# ---------------------------------------------------------------------------------------------- search
@pytest.fixture(scope="module")
def gallery(tiny_clip):
    """A recorded store holding 12 images (half with payload split=a) and 6 texts."""
    client = RecordingClient()
    store = make_store(tiny_clip, client)
    pil = images(12, seed=3)
    report = store.ingest_images(pil, payloads=[{"split": "ab"[i % 2]} for i in range(12)], progress=False)
    texts = ["a cat", "a dog on grass", "a red car", "two cats", "a blue car", "a dog"]
    text_report = store.ingest_texts(texts, progress=False)
    return store, pil, report.ids, texts, text_report.ids


def brute_force(store, query, name, exclude=None):
    """Ids ranked by cosine between the query [E] and every stored ``name`` vector."""
    records, _ = store.client.inner.scroll(store.collection_name, limit=1000, with_vectors=[name])
    records = [r for r in records if name in (r.vector or {}) and str(r.id) != str(exclude)]
    matrix = torch.tensor([r.vector[name] for r in records])
    order = (F.normalize(matrix, dim=-1) @ F.normalize(query, dim=-1)).argsort(descending=True)
    return [str(records[i].id) for i in order]


def last_query(client):
    name, _, kwargs = client.calls[-1]
    assert name in ("query_points", "query_batch_points")
    return kwargs


def test_modes_search_the_right_vectors(gallery):
    store, pil, ids, _, _ = gallery
    query = encode_images(store.model, store.preprocess, pil[:1])[0]
    oti = torch.tensor(stored_vectors(store, [ids[0]], "image_oti")[0])
    expected = {
        "native": brute_force(store, query, "image", exclude=ids[0]),
        "gallery_inverted": brute_force(store, query, "image_oti", exclude=ids[0]),
        # the query's OTI equals its stored one: inversion is seeded by the content id
        "query_inverted": brute_force(store, oti, "image", exclude=ids[0]),
    }
    usings = {"native": "image", "gallery_inverted": "image_oti", "query_inverted": "image"}
    for mode, ranking in expected.items():
        hits = store.search_images(pil[0], mode=mode, limit=5)
        assert [str(h.id) for h in hits] == ranking[:5], mode
        sent = last_query(store.client)
        assert sent["using"] == usings[mode] and sent["lookup_from"] is None
        assert sent["query_filter"].must_not[0].has_id == [ids[0]]
    assert expected["native"][:5] != expected["gallery_inverted"][:5]


def test_fused_mode_is_prefetch_and_rrf(gallery):
    store, pil, ids, _, _ = gallery
    hits = store.search_images(pil[1], mode="fused", limit=4, prefetch_limit=6)
    sent = last_query(store.client)
    assert sent["query"] == models.FusionQuery(fusion=models.Fusion.RRF)
    assert [(p.using, p.limit) for p in sent["prefetch"]] == [("image_oti", 6), ("image", 6)]
    query = encode_images(store.model, store.preprocess, pil[1:2])[0]
    # reciprocal rank fusion of the two inter-modal rankings, recomputed here
    routes = [brute_force(store, query, "image_oti", ids[1])[:6],
              brute_force(store, torch.tensor(stored_vectors(store, [ids[1]], "image_oti")[0]), "image", ids[1])[:6]]
    scores = {}
    for ranking in routes:
        for rank, pid in enumerate(ranking):
            scores[pid] = scores.get(pid, 0) + 1 / (rank + 1)
    best = sorted(scores, key=lambda p: -scores[p])
    assert str(hits[0].id) == best[0] and {str(h.id) for h in hits} <= set(scores)


def test_point_id_queries_look_up_and_compute_nothing(gallery, monkeypatch):
    store, pil, ids, _, _ = gallery
    by_image = {mode: [h.id for h in store.search_images(pil[2], mode=mode, limit=4)] for mode in
                ("native", "gallery_inverted", "query_inverted", "fused")}

    def forbidden(*args, **kwargs):
        raise AssertionError("a point-id query recomputed something")

    monkeypatch.setattr(store.model, "encode_image", forbidden)
    monkeypatch.setattr(store, "_invert", forbidden)
    lookups = {"native": None, "gallery_inverted": "image", "query_inverted": "image_oti"}
    for mode, lookup in lookups.items():
        hits = store.search_images(uuid.UUID(ids[2]), mode=mode, limit=4)
        assert [h.id for h in hits] == by_image[mode]
        sent = last_query(store.client)
        assert sent["query"] == ids[2]
        assert (sent["lookup_from"].vector if sent["lookup_from"] else None) == lookup
        assert ids[2] not in [h.id for h in hits]
    assert [h.id for h in store.search_images(ids[2], mode="fused", limit=4)] == by_image["fused"]
    prefetch = last_query(store.client)["prefetch"]
    assert [p.lookup_from.vector for p in prefetch] == ["image", "image_oti"]


def test_exclude_query_false_keeps_the_query_item(gallery):
    store, pil, ids, _, _ = gallery
    for query in (pil[3], ids[3]):
        hits = store.search_images(query, mode="native", limit=2, exclude_query=False)
        assert hits[0].id == ids[3] and hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_filters_pass_through(gallery):
    store, pil, ids, _, _ = gallery
    only_a = models.Filter(must=[models.FieldCondition(key="split", match=models.MatchValue(value="a"))])
    for mode in ("native", "gallery_inverted", "fused"):
        hits = store.search_images(pil[0], mode=mode, limit=20, query_filter=only_a)
        assert {h.payload["split"] for h in hits} == {"a"} and ids[0] not in [h.id for h in hits]
        assert len(hits) == 5, mode
    hits = store.search_images(ids[0], mode="gallery_inverted", limit=20, query_filter=only_a, exclude_query=False)
    assert len(hits) == 6 and ids[0] in [h.id for h in hits]


def test_batch_queries_use_query_batch_points(gallery):
    store, pil, ids, _, _ = gallery
    features = encode_images(store.model, store.preprocess, pil[:3])
    results = store.search_images(features, mode="gallery_inverted", limit=3)
    assert store.client.calls[-1][0] == "query_batch_points" and len(results) == 3
    singles = [[h.id for h in store.search_images(f, mode="gallery_inverted", limit=3)] for f in features]
    assert [[h.id for h in r] for r in results] == singles
    mixed = store.search_images([pil[0], ids[1]], mode="query_inverted", limit=3)
    assert len(mixed) == 2 and ids[1] not in [h.id for h in mixed[1]]


def test_text_search_modes(gallery):
    store, _, image_ids, texts, ids = gallery
    query = encode_texts(store.model, store.tokenizer, ["a cat"])[0]
    hits = store.search_texts("a cat", mode="gallery_inverted", limit=3)
    assert [h.id for h in hits] == brute_force(store, query, "text_ovi", exclude=ids[0])[:3]
    assert last_query(store.client)["using"] == "text_ovi"
    assert all(h.payload["modality"] == "text" for h in hits)
    ovi = torch.tensor(stored_vectors(store, [ids[0]], "text_ovi")[0])
    hits = store.search_texts("a cat", mode="query_inverted", limit=3)
    assert [h.id for h in hits] == brute_force(store, ovi, "text", exclude=ids[0])[:3]
    assert [h.id for h in store.search_texts(ids[0], mode="query_inverted", limit=3)] == [h.id for h in hits]
    fused = store.search_texts("a cat", mode="fused", limit=3)
    assert len(fused) == 3 and not set(h.id for h in fused) & set(image_ids)


def test_search_errors_name_the_problem(gallery, tiny_clip):
    store, pil, ids, _, _ = gallery
    with pytest.raises(ValueError, match="mode must be one of"):
        store.search_images(pil[0], mode="intermodal")
    with pytest.raises(PointNotFoundError, match="not in collection"):
        store.search_images(str(uuid.uuid4()), mode="native")
    with pytest.raises(ValueError, match="NaN"):
        store.search_images(torch.full((32,), float("nan")))
    with pytest.raises(FileNotFoundError, match="neither an image file nor a point id"):
        store.search_images("no/such/file.png")
    other = make_store(tiny_clip, name="partial")
    report = other.ingest_images(pil[:3], invert=False, progress=False)
    with pytest.raises(PointNotFoundError, match=r"no 'image_oti' vector.*invert_missing"):
        other.search_images(report.ids[0], mode="query_inverted")


# ------------------------------------------------------------------------------- server-side options
@pytest.mark.filterwarnings("ignore:Local mode performs exact")
def test_server_options_reach_the_requests(tiny_clip):
    client = RecordingClient()
    quantization = models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8))
    store = make_store(tiny_clip, client, shard_number=3, replication_factor=2, quantization_config=quantization,
                       on_disk=True, oversampling=2.0)
    created = client.named("create_collection")[0]
    assert created["shard_number"] == 3 and created["replication_factor"] == 2
    assert created["quantization_config"] == quantization
    assert all(v.on_disk for v in created["vectors_config"].values())
    store.ingest_images(unit(4), progress=False)
    assert all(kwargs["wait"] for kwargs in client.named("upsert") + client.named("update_vectors"))
    store.search_images(unit(1)[0], mode="gallery_inverted")
    params = client.named("query_points")[-1]["search_params"]
    assert params.quantization.rescore is True and params.quantization.oversampling == 2.0
    store.search_images(unit(1)[0], mode="fused")
    sent = client.named("query_points")[-1]
    assert all(p.params.quantization.rescore for p in sent["prefetch"])


@pytest.mark.filterwarnings("ignore:Local mode performs exact")
def test_quantization_of_an_existing_collection_turns_rescoring_on(tiny_clip):
    client = RecordingClient()
    make_store(tiny_clip, client)
    info = client.inner.get_collection("gallery")
    info.config.quantization_config = models.BinaryQuantization(binary=models.BinaryQuantizationConfig())
    client.inner.get_collection = lambda name: info  # local mode keeps no quantization config
    store = make_store(tiny_clip, client)
    store.search_images(unit(1)[0], mode="native")
    assert client.named("query_points")[-1]["search_params"].quantization.rescore is True


def test_transient_errors_are_retried_with_backoff(tiny_clip):
    client = FlakyClient("upsert", 2, ResponseHandlingException(ConnectionError("connection reset")))
    store = make_store(tiny_clip, client, retry=RetryPolicy(attempts=3, backoff=1.0))
    delays = []
    store._sleep = delays.append
    report = store.ingest_images(unit(3), progress=False)
    assert report.inserted == 3 and store.count() == 3
    assert len(delays) == 2 and 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0


def test_exhausted_retries_name_the_server(tiny_clip):
    client = FlakyClient("query_points", 10, ResponseHandlingException(TimeoutError("timed out")))
    store = make_store(tiny_clip, client, retry=RetryPolicy(attempts=2, backoff=0.0))
    store._sleep = lambda s: None
    with pytest.raises(ConnectionError, match=r"http://recorded:6333.*2 attempt"):
        store.search_images(unit(1)[0], mode="native")
    assert len(client.named("query_points")) == 2


def test_other_errors_are_not_retried(tiny_clip):
    client = FlakyClient("query_points", 1, ValueError("bad request"))
    store = make_store(tiny_clip, client)
    with pytest.raises(ValueError, match="bad request"):
        store.search_images(unit(1)[0], mode="native")
    assert len(client.named("query_points")) == 1


def test_unreachable_server_gives_a_connection_error_naming_the_url(tiny_clip):
    model, preprocess, tokenizer = tiny_clip
    url = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(ConnectionError, match="127.0.0.1:9"):
        CrossModalStore.open(url, "gallery", model, tokenizer, preprocess, model_id=MODEL_ID, timeout=2,
                             retry=RetryPolicy(attempts=2, backoff=0.01))


# --------------------------------------------------------------------------------------- local folder
def test_local_folder_is_persistent_and_locked(tiny_clip, tmp_path):
    model, preprocess, tokenizer = tiny_clip
    folder = str(tmp_path / "qdrant")
    with CrossModalStore.open(folder, "gallery", model, tokenizer, preprocess, model_id=MODEL_ID, **FAST) as store:
        report = store.ingest_texts(["a cat", "a dog"], progress=False)
        with pytest.raises(StoreLockedError, match="already open"):
            CrossModalStore.open(folder, "gallery", model, tokenizer, preprocess, model_id=MODEL_ID)
        with pytest.raises(ValueError, match="api_key is for Qdrant servers"):
            CrossModalStore.open(str(tmp_path / "other"), "g", model, tokenizer, preprocess, model_id=MODEL_ID,
                                 api_key="secret")
    with CrossModalStore.open(folder, "gallery", model, tokenizer, preprocess, model_id=MODEL_ID, **FAST) as store:
        assert store.count() == 2 and store.info()["vectors"]["text_ovi"]["points"] == 2
        assert store.ingest_texts(["a cat", "a dog"], progress=False).skipped_existing == 2
    with pytest.raises(SchemaMismatchError, match="another-model"):
        CrossModalStore.open(folder, "gallery", model, tokenizer, preprocess, model_id="another-model")
    with CrossModalStore.open(folder, "gallery", model, tokenizer, preprocess, model_id=MODEL_ID) as store:
        points, _ = store.client.scroll(store.collection_name, limit=10)
        assert {str(p.id) for p in points} == {str(i) for i in report.ids}


def test_sigkill_mid_ingestion_then_rerun_stores_every_item_once(tiny_clip, tmp_path):
    sys.path.insert(0, HERE)
    from store_kill_worker import COLLECTION, synthetic_features

    folder, n, batch = str(tmp_path / "qdrant"), 20, 4
    worker = [sys.executable, os.path.join(HERE, "store_kill_worker.py"), folder, str(n), str(batch)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(worker + ["30"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        seen = 0
        for line in proc.stdout:
            seen += line.startswith("INVERTING")
            if seen == 2:  # batch 1 written, batch 2's inversion under way
                break
        assert seen == 2, "the worker ended before its second inversion"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    client = QdrantClient(path=folder)
    has = lambda name: models.Filter(must=[models.HasVectorCondition(has_vector=name)])  # noqa: E731
    points_before = client.count(COLLECTION).count
    inverted_before = client.count(COLLECTION, count_filter=has("image_oti")).count
    client.close()
    assert (points_before, inverted_before) == (batch, batch)

    done = subprocess.run(worker + ["0"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.split("REPORT ", 1)[1])
    assert report == {"inserted": n - points_before, "skipped_existing": inverted_before,
                      "inverted": n - inverted_before, "duplicates": 0}

    client = QdrantClient(path=folder)
    try:
        expected = sorted(features_id("image", row) for row in synthetic_features(n))
        records, _ = client.scroll(COLLECTION, limit=10 * n, with_vectors=True)
        assert sorted(str(r.id) for r in records) == expected
        assert all(set(r.vector) == {"image", "image_oti"} for r in records)
    finally:
        client.close()
