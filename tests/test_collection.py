"""The model-free collection layer on every engine: Edge on a folder, qdrant-client ":memory:" and local mode.

Each Collection method is checked against a plain numpy / Python reference on all three engines, so the
engines agree with each other by construction.
"""

import errno
import http.server
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from qdrant_client.local import persistence

from crossgap_qdrant.store import edge as edge_module
from crossgap_qdrant.store.client_engine import ClientCollection
from crossgap_qdrant.store.connection import RetryPolicy
from crossgap_qdrant.store.edge import EdgeCollection
from crossgap_qdrant.store.engines import engine_for, open_collection
from crossgap_qdrant.store.errors import (
    CollectionNotFoundError,
    CorruptMetadataError,
    InvalidPointIdError,
    QdrantServerError,
    SchemaMismatchError,
    StorageFullError,
    StoreLockedError,
    UntranslatableError,
)
from crossgap_qdrant.store.ids import normalize_point_id

ENGINES = ["edge", "memory", "local"]
DIM = 8
N = 60
META = {"crossgap_qdrant": {"model_id": "test-model", "dims": [DIM]}}


def _open(kind, tmp_path, name="c", **kwargs):
    if kind == "memory":
        return open_collection(":memory:", name, **kwargs)
    engine = "local" if kind == "local" else None
    return open_collection(tmp_path / "db", name, engine=engine, create_folder=True, **kwargs)


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    image = _unit(rng.normal(size=(N, DIM)))
    text = _unit(rng.normal(size=(N, DIM)))
    payloads = []
    for i in range(N):
        p = {"kind": ["cat", "dog", "bird"][i % 3], "n": i, "tags": [f"t{i % 4}", f"t{(i + 1) % 4}"]}
        if i % 5 == 0:
            p["note"] = None
        if i % 7 == 0:
            p["empty"] = []
        if i % 6 == 0:
            p["meta"] = {"score": float(i) / 10}
        payloads.append(p)
    return image, text, payloads


def _fill(coll, with_text_every=2):
    image, text, payloads = _data()
    coll.create({"image": DIM, "text": DIM}, META)
    points = []
    for i in range(N):
        vec = {"image": image[i].tolist()}
        if i % with_text_every == 0:
            vec["text"] = text[i].tolist()
        points.append(models.PointStruct(id=i, vector=vec, payload=payloads[i]))
    coll.upsert(points)
    return image, text, payloads


@pytest.fixture(params=ENGINES)
def coll(request, tmp_path):
    c = _open(request.param, tmp_path)
    c.kind = request.param
    yield c
    c.close()


@pytest.fixture(scope="module", params=ENGINES)
def filled(request, tmp_path_factory):
    """A filled collection per engine, shared by the tests that only read."""
    c = _open(request.param, tmp_path_factory.mktemp(request.param))
    c.kind = request.param
    c.data = _fill(c)
    yield c
    c.close()


# ---------------------------------------------------------------------------------------------- schema
def test_create_schema_and_metadata(coll):
    assert not coll.exists()
    with pytest.raises(CollectionNotFoundError):
        coll.schema()
    coll.create({"image": DIM, "text": 4}, META)
    assert coll.exists()
    schema = coll.schema()
    assert {n: (v.size, v.distance) for n, v in schema.vectors.items()} == {"image": (DIM, "Cosine"),
                                                                          "text": (4, "Cosine")}
    assert schema.metadata == META and not schema.quantized and not schema.unnamed
    coll.set_metadata({"other": 1})
    assert coll.schema().metadata == {"other": 1}  # replaced, not merged
    coll.add_vectors({"image": DIM, "text_ovi": 4})
    assert set(coll.schema().vectors) == {"image", "text", "text_ovi"}
    with pytest.raises(SchemaMismatchError):
        coll.add_vectors({"image": DIM + 1})
    assert coll.engine == ("qdrant-edge" if coll.kind == "edge" else "qdrant-client")


def test_added_vector_is_writable(coll):
    _fill(coll)
    coll.add_vectors({"image_oti": DIM})
    coll.update_vectors([models.PointVectors(id=3, vector={"image_oti": [1.0] + [0.0] * (DIM - 1)})])
    (rec,) = coll.retrieve([3], with_vectors=["image_oti"])
    np.testing.assert_allclose(rec.vector["image_oti"], [1.0] + [0.0] * (DIM - 1), atol=1e-6)


@pytest.mark.parametrize("kind", ["edge", "local"])
def test_reads_never_create(kind, tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(CollectionNotFoundError, match="missing"):
        open_collection(missing, "c", engine="local" if kind == "local" else None)
    assert not missing.exists()
    (tmp_path / "db").mkdir()
    c = open_collection(tmp_path / "db", "c", engine="local" if kind == "local" else None)
    before = sorted(os.listdir(tmp_path / "db"))
    assert not c.exists()
    with pytest.raises(CollectionNotFoundError):
        c.schema()
    if kind == "edge":
        with pytest.raises(CollectionNotFoundError):
            c.count()
    c.close()
    if kind == "edge":
        assert sorted(os.listdir(tmp_path / "db")) == before == []


# ---------------------------------------------------------------------------------------------- points
def test_upsert_retrieve(coll):
    image, text, payloads = _fill(coll)
    recs = coll.retrieve([0, 1, 999], with_payload=True, with_vectors=True)
    by_id = {r.id: r for r in recs}
    assert set(by_id) == {0, 1}
    np.testing.assert_allclose(by_id[0].vector["image"], image[0], atol=1e-6)
    np.testing.assert_allclose(by_id[0].vector["text"], text[0], atol=1e-6)
    assert set(by_id[1].vector) == {"image"}
    assert by_id[1].payload == payloads[1]
    (bare,) = coll.retrieve([2])
    assert bare.payload is None and bare.vector is None
    (some,) = coll.retrieve([2], with_payload=["kind"], with_vectors=["text"])
    assert some.payload == {"kind": "bird"} and set(some.vector) == {"text"}
    # a not-normalised vector is stored as its unit vector (Cosine)
    coll.upsert([models.PointStruct(id=5, vector={"image": (3 * image[5]).tolist()}, payload={"n": 5})])
    (rec,) = coll.retrieve([5], with_payload=True, with_vectors=["image"])
    np.testing.assert_allclose(rec.vector["image"], image[5], atol=1e-6)
    assert rec.payload == {"n": 5}  # upsert replaces the whole point


def test_uuid_ids(coll):
    coll.create({"image": DIM}, META)
    pid = str(uuid.UUID(int=12345))
    coll.upsert([models.PointStruct(id=pid, vector={"image": [1.0] * DIM}, payload={"a": 1})])
    (rec,) = coll.retrieve([pid], with_payload=True)
    assert rec.id == pid and rec.payload == {"a": 1}
    assert coll.count(models.Filter(must=[models.HasIdCondition(has_id=[pid])])) == 1


def test_point_ids_follow_one_rule_on_every_engine(coll):
    coll.create({"image": DIM}, META)
    coll.upsert([models.PointStruct(id=5, vector={"image": [1.0] * DIM}, payload={"a": 1})])
    coll.set_payload([np.int64(5)], {"b": 2})  # numpy integers name points like ints (ids read from arrays)
    (rec,) = coll.retrieve([np.uint64(5)], with_payload=True)
    assert rec.id == 5 and rec.payload == {"a": 1, "b": 2}
    assert normalize_point_id(np.int64(5)) == 5 and type(normalize_point_id(np.int64(5))) is int
    for bad in (True, -1, 2**64, "not-a-uuid", 1.5):
        with pytest.raises(InvalidPointIdError, match="invalid point id"):
            coll.retrieve([bad])


def test_update_vectors_and_set_payload(coll):
    image, text, payloads = _fill(coll)
    new = _unit(np.arange(1, DIM + 1))
    coll.update_vectors([models.PointVectors(id=1, vector={"text": new.tolist()})])
    (rec,) = coll.retrieve([1], with_payload=True, with_vectors=True)
    np.testing.assert_allclose(rec.vector["text"], new, atol=1e-6)
    np.testing.assert_allclose(rec.vector["image"], image[1], atol=1e-6)  # kept
    assert rec.payload == payloads[1]  # kept
    coll.set_payload([1, 2], {"extra": "x", "n": -1})
    recs = {r.id: r.payload for r in coll.retrieve([1, 2], with_payload=True)}
    assert recs[1] == {**payloads[1], "extra": "x", "n": -1}
    assert recs[2] == {**payloads[2], "extra": "x", "n": -1}


def test_scroll_and_count(filled):
    assert filled.count() == N
    seen, offset, pages = [], None, 0
    while True:
        page, offset = filled.scroll(limit=25, offset=offset, with_payload=False)
        seen += [r.id for r in page]
        pages += 1
        if offset is None:
            break
    assert seen == list(range(N)) and pages == 3
    flt = models.Filter(must=[models.FieldCondition(key="kind", match=models.MatchValue(value="cat"))])
    page, nxt = filled.scroll(scroll_filter=flt, limit=100, with_vectors=["image"])
    assert [r.id for r in page] == list(range(0, N, 3)) and nxt is None
    assert all(set(r.vector) == {"image"} for r in page)
    assert filled.count(flt) == len(range(0, N, 3))


def test_pages_walks_every_point_and_stops_at_the_limit(filled):
    assert [r.id for page in filled.pages(page_size=25) for r in page] == list(range(N))
    pages = list(filled.pages(page_size=25, limit=30))
    assert [len(p) for p in pages] == [25, 5] and [r.id for p in pages for r in p] == list(range(30))
    flt = models.Filter(must=[models.FieldCondition(key="kind", match=models.MatchValue(value="cat"))])
    got = [r for page in filled.pages(flt, page_size=7, with_vectors=["image"]) for r in page]
    assert [r.id for r in got] == list(range(0, N, 3)) and all(set(r.vector) == {"image"} for r in got)


# ---------------------------------------------------------------------------------------------- filters
def _filters():
    F, FC = models.Filter, models.FieldCondition
    return {
        "match_value": (F(must=[FC(key="kind", match=models.MatchValue(value="dog"))]), lambda i, p: i % 3 == 1),
        "match_int": (F(must=[FC(key="n", match=models.MatchValue(value=7))]), lambda i, p: i == 7),
        "match_any": (F(must=[FC(key="kind", match=models.MatchAny(any=["cat", "bird"]))]), lambda i, p: i % 3 != 1),
        "match_except": (F(must=[FC(key="kind", match=models.MatchExcept(**{"except": ["cat"]}))]),
                         lambda i, p: i % 3 != 0),
        "array_any": (F(must=[FC(key="tags", match=models.MatchValue(value="t0"))]),
                      lambda i, p: "t0" in p["tags"]),
        "range": (F(must=[FC(key="n", range=models.Range(gte=10, lt=20))]), lambda i, p: 10 <= i < 20),
        "nested_key": (F(must=[FC(key="meta.score", range=models.Range(gt=2.0))]),
                       lambda i, p: i % 6 == 0 and i / 10 > 2.0),
        "should": (F(should=[FC(key="n", range=models.Range(lt=5)), FC(key="n", range=models.Range(gt=55))]),
                   lambda i, p: i < 5 or i > 55),
        "must_not": (F(must_not=[FC(key="kind", match=models.MatchValue(value="cat"))]), lambda i, p: i % 3 != 0),
        "has_id": (F(must=[models.HasIdCondition(has_id=[1, 2, 3, 500])]), lambda i, p: i in (1, 2, 3)),
        "not_has_id": (F(must_not=[models.HasIdCondition(has_id=[0])]), lambda i, p: i != 0),
        "has_vector": (F(must=[models.HasVectorCondition(has_vector="text")]), lambda i, p: i % 2 == 0),
        "is_null": (F(must=[models.IsNullCondition(is_null=models.PayloadField(key="note"))]),
                    lambda i, p: i % 5 == 0),
        "is_empty": (F(must=[models.IsEmptyCondition(is_empty=models.PayloadField(key="empty"))]),
                     lambda i, p: "empty" not in p or p["empty"] in ([], None)),
        "nested_filter": (F(must=[F(should=[FC(key="kind", match=models.MatchValue(value="cat")),
                                            FC(key="n", range=models.Range(gte=50))]),
                                  F(must_not=[models.HasIdCondition(has_id=[3])])]),
                          lambda i, p: (i % 3 == 0 or i >= 50) and i != 3),
        "min_should": (F(min_should=models.MinShould(conditions=[
            FC(key="kind", match=models.MatchValue(value="cat")), FC(key="n", range=models.Range(lt=30)),
            models.HasVectorCondition(has_vector="text")], min_count=2)),
            lambda i, p: (i % 3 == 0) + (i < 30) + (i % 2 == 0) >= 2),
        "single_condition": (F(must=FC(key="kind", match=models.MatchValue(value="bird"))),
                             lambda i, p: i % 3 == 2),
    }


@pytest.mark.parametrize("name", list(_filters()))
def test_filters_match_reference(filled, name):
    image, _, payloads = filled.data
    flt, predicate = _filters()[name]
    expected = [i for i in range(N) if predicate(i, payloads[i])]
    assert expected, "a filter that matches nothing tests nothing"
    page, _ = filled.scroll(scroll_filter=flt, limit=N, with_payload=False)
    assert [r.id for r in page] == expected
    assert filled.count(flt) == len(expected)
    hits = filled.query([models.QueryRequest(query=image[0].tolist(), using="image", filter=flt, limit=N)])[0]
    assert sorted(h.id for h in hits) == expected


# ---------------------------------------------------------------------------------------------- queries
def _nearest_ref(gallery, ids, q, limit):
    scores = gallery @ _unit(q)
    order = np.argsort(-scores, kind="stable")[:limit]
    return [ids[j] for j in order], scores[order]


def test_query_nearest_matches_reference(filled):
    image, text, _ = filled.data
    q = np.random.default_rng(1).normal(size=DIM)
    res = filled.query([models.QueryRequest(query=q.tolist(), using="image", limit=10, with_payload=["kind"]),
                      models.QueryRequest(query=q.tolist(), using="text", limit=5, with_vector=["text"])])
    ref_ids, ref_scores = _nearest_ref(image, list(range(N)), q, 10)
    assert [h.id for h in res[0]] == ref_ids
    np.testing.assert_allclose([h.score for h in res[0]], ref_scores, atol=1e-5)
    assert all(set(h.payload) == {"kind"} and h.vector is None for h in res[0])
    t_ids = list(range(0, N, 2))
    ref_ids, _ = _nearest_ref(text[t_ids], t_ids, q, 5)
    assert [h.id for h in res[1]] == ref_ids
    assert all(set(h.vector) == {"text"} for h in res[1])


def _rrf_ref(lists, k=2, limit=10):
    scores = {}
    for ranked in lists:
        for rank, pid in enumerate(ranked):
            scores[pid] = scores.get(pid, 0.0) + 1.0 / (k + rank)  # rank from 0, as Qdrant counts
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]


def test_prefetch_rrf_matches_reference(filled):
    image, text, _ = filled.data
    rng = np.random.default_rng(2)
    q1, q2 = rng.normal(size=DIM), rng.normal(size=DIM)
    flt = models.Filter(must_not=[models.HasIdCondition(has_id=[0])])
    request = models.QueryRequest(
        prefetch=[models.Prefetch(query=q1.tolist(), using="image", limit=20, filter=flt),
                  models.Prefetch(query=q2.tolist(), using="text", limit=20, filter=flt)],
        query=models.FusionQuery(fusion=models.Fusion.RRF), filter=flt, limit=10)
    (hits,) = filled.query([request])
    keep = [i for i in range(1, N)]
    l1, _ = _nearest_ref(image[keep], keep, q1, 20)
    t_keep = [i for i in keep if i % 2 == 0]
    l2, _ = _nearest_ref(text[t_keep], t_keep, q2, 20)
    ref = _rrf_ref([l1, l2], limit=None)
    np.testing.assert_allclose([h.score for h in hits], [s for _, s in ref[:10]], atol=1e-6)
    full = dict(ref)
    np.testing.assert_allclose([h.score for h in hits], [full[h.id] for h in hits], atol=1e-6)


def test_prefetch_dbsf_puts_the_common_best_first(filled):
    image, text, _ = filled.data
    request = models.QueryRequest(
        prefetch=[models.Prefetch(query=image[4].tolist(), using="image", limit=10),
                  models.Prefetch(query=text[4].tolist(), using="text", limit=10)],
        query=models.FusionQuery(fusion=models.Fusion.DBSF), limit=5)
    (hits,) = filled.query([request])
    scores = [h.score for h in hits]
    assert hits[0].id == 4 and len(hits) == 5 and scores == sorted(scores, reverse=True)


def test_edge_refuses_what_it_cannot_run(tmp_path):
    c = _open("edge", tmp_path)
    _fill(c)
    with pytest.raises(UntranslatableError, match="point id"):
        c.query([models.QueryRequest(query=3, using="image", limit=3)])
    with pytest.raises(UntranslatableError, match="lookup_from"):
        c.query([models.QueryRequest(query=[0.1] * DIM, using="image", limit=3,
                                     lookup_from=models.LookupLocation(collection="c", vector="text"))])
    with pytest.raises(UntranslatableError, match="RecommendQuery"):
        c.query([models.QueryRequest(query=models.RecommendQuery(recommend=models.RecommendInput(positive=[1])),
                                     using="image", limit=3)])
    # the binding reads True/False as 1/0: a boolean match would quietly select the integer-valued points
    for match in (models.MatchValue(value=True), models.MatchValue(value=False)):
        flt = models.Filter(must=[models.FieldCondition(key="fav", match=match)])
        with pytest.raises(UntranslatableError, match="boolean"):
            c.scroll(scroll_filter=flt)
    c.close()


def test_edge_exact_and_hnsw_paths_agree(tmp_path):
    c = _open("edge", tmp_path)
    image, _, _ = _fill(c)
    q = image[9].tolist()
    req = models.QueryRequest(query=q, using="image", limit=5)
    exact = c.query([req])[0]
    c.exact_search_below = 0
    c.optimize()
    assert [h.id for h in c.query([req])[0]] == [h.id for h in exact]
    c.close()


def test_edge_optimize_is_cheap_when_nothing_changed(tmp_path, monkeypatch):
    c = _open("edge", tmp_path)
    _fill(c)
    runs = []
    real = edge_module.optimize_shard
    monkeypatch.setattr(edge_module, "optimize_shard", lambda shard: runs.append(1) or real(shard))
    c.optimize()
    c.optimize()
    assert len(runs) == 1
    c.upsert([models.PointStruct(id=100, vector={"image": [1.0] * DIM})])
    c.optimize()
    c.optimize()
    assert len(runs) == 2
    c.close()


# ---------------------------------------------------------------------------------------------- lifecycle
def test_close_is_idempotent_and_final(coll):
    _fill(coll)
    coll.close()
    coll.close()
    with pytest.raises(RuntimeError, match="closed"):
        coll.count()


def test_users_client_is_not_closed():
    client = QdrantClient(":memory:")
    c = open_collection(None, "c", client=client)
    assert isinstance(c, ClientCollection) and c.location == ":memory:"
    c.create({"image": DIM}, META)
    c.close()
    assert client.collection_exists("c")  # still usable


@pytest.mark.parametrize("kind", ["edge", "local"])
def test_second_opening_is_locked(kind, tmp_path):
    a = _open(kind, tmp_path)
    _fill(a)
    b = _open(kind, tmp_path) if kind == "edge" else None
    with pytest.raises(StoreLockedError, match=str(tmp_path / "db")):
        if kind == "edge":
            b.count()
        else:
            _open(kind, tmp_path)
    a.close()
    c = _open(kind, tmp_path)  # closing released the lock
    assert c.count() == N
    c.close()


def test_edge_folder_locked_by_another_process(tmp_path):
    a = _open("edge", tmp_path)
    _fill(a)
    a.close()
    code = ("import sys, time, qdrant_edge; shard = qdrant_edge.EdgeShard.load(sys.argv[1]); "
            "print('open', flush=True); time.sleep(30)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "db" / "c" / "shard")],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "open"
        b = _open("edge", tmp_path)
        with pytest.raises(StoreLockedError, match=f"already open in process {proc.pid} "):
            b.count()
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------- disk full
def test_edge_disk_full_keeps_what_was_stored(tmp_path, monkeypatch):
    c = _open("edge", tmp_path)
    _fill(c)

    def full(shard, operation):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(edge_module, "apply_update", full)
    with pytest.raises(StorageFullError, match="nothing stored before") as info:
        c.upsert([models.PointStruct(id=500, vector={"image": [1.0] * DIM})])
    assert str(tmp_path / "db") in str(info.value) and info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    c.close()
    c = _open("edge", tmp_path)
    assert c.count() == N and c.schema().metadata == META
    c.close()


def test_edge_refuses_writes_without_headroom(tmp_path, monkeypatch):
    # Edge's WAL is memory-mapped: a write onto a full disk would end the process (SIGBUS), so it is refused
    c = _open("edge", tmp_path)
    _fill(c)
    monkeypatch.setattr(edge_module, "free_bytes", lambda path: edge_module.MIN_MARGIN - 1)
    with pytest.raises(StorageFullError, match="MiB free"):
        c.upsert([models.PointStruct(id=500, vector={"image": [1.0] * DIM})])
    with pytest.raises(StorageFullError):
        c.update_vectors([models.PointVectors(id=1, vector={"image": [1.0] * DIM})])
    with pytest.raises(StorageFullError):
        EdgeCollection(tmp_path / "db", "other").create({"image": DIM}, META)
    monkeypatch.undo()
    assert c.count() == N and c.retrieve([500]) == []
    c.close()


def test_edge_engine_disk_full_message_is_recognised(tmp_path, monkeypatch):
    c = _open("edge", tmp_path)
    _fill(c)

    def full(shard, operation):
        raise Exception("Service internal error: No space left on device (os error 28)")

    monkeypatch.setattr(edge_module, "apply_update", full)
    with pytest.raises(StorageFullError, match=str(tmp_path / "db")):
        c.set_payload([1], {"a": 1})
    c.close()


def test_edge_sidecar_is_replaced_atomically(tmp_path, monkeypatch):
    c = _open("edge", tmp_path)
    _fill(c)
    real_dump = json.dump

    def dump_then_fail(obj, f, **kwargs):
        f.write('{"format": 1, "meta')  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(edge_module.json, "dump", dump_then_fail)
    with pytest.raises(StorageFullError, match="nothing stored before"):
        c.set_metadata({"new": True})
    monkeypatch.setattr(edge_module.json, "dump", real_dump)
    assert c.schema().metadata == META
    assert sorted(os.listdir(c.path)) == ["collection.json", "shard"]  # no temporary left behind
    c.close()


@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]"])
def test_edge_corrupt_sidecar_is_named(tmp_path, content):
    c = _open("edge", tmp_path)
    _fill(c)
    c.close()
    with open(tmp_path / "db" / "c" / "collection.json", "wb") as f:
        f.write(content)
    c = _open("edge", tmp_path)
    with pytest.raises(CorruptMetadataError, match="collection.json"):
        c.schema()
    assert c.count() == N  # the points are intact
    c.close()


def test_local_disk_full_names_the_folder(tmp_path, monkeypatch):
    c = _open("local", tmp_path)
    _fill(c)

    def full(self, point):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(persistence.CollectionPersistence, "persist", full)
    with pytest.raises(StorageFullError, match=str(tmp_path / "db")):
        c.upsert([models.PointStruct(id=500, vector={"image": [1.0] * DIM})])
    monkeypatch.undo()
    c.close()
    c = _open("local", tmp_path)
    assert c.count() == N
    c.close()


def test_local_empty_meta_json_does_not_lock_the_folder_out(tmp_path):
    folder = tmp_path / "db"
    folder.mkdir()
    (folder / "meta.json").write_bytes(b"")  # what a full disk leaves on local mode's first open
    with pytest.raises(CollectionNotFoundError, match="meta.json"):
        open_collection(folder, "c", engine="local")
    c = open_collection(folder, "c", engine="local", create_folder=True)
    _fill(c)
    c.close()
    c = open_collection(folder, "c", engine="local")
    assert c.count() == N
    c.close()


def test_local_damaged_meta_json_with_data_is_named(tmp_path):
    c = _open("local", tmp_path)
    _fill(c)
    c.close()
    (tmp_path / "db" / "meta.json").write_bytes(b"")
    with pytest.raises(ValueError, match="meta.json"):
        _open("local", tmp_path)


# ---------------------------------------------------------------------------------------------- servers
def test_engine_choice():
    assert engine_for("/some/folder") == "edge"
    assert engine_for("/some/folder", "local") == "local"
    assert engine_for(":memory:") == "client"
    assert engine_for("https://host:6333") == "client"
    with pytest.raises(ValueError, match="engine='local'"):
        engine_for("/some/folder", "client")
    with pytest.raises(ValueError):
        engine_for("http://host:6333", "edge")
    with pytest.raises(ValueError, match="engine must be"):
        engine_for("/f", "bogus")


@pytest.fixture
def hanging_server():
    """A loopback socket that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_hanging_server_fails_within_the_deadline(hanging_server):
    url = f"http://user:secret@127.0.0.1:{hanging_server}"
    start = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        open_collection(url, "c", retry=RetryPolicy(attempts=3, deadline=2), timeout=30,
                        client_kwargs={"check_compatibility": False})
    elapsed = time.monotonic() - start
    assert elapsed < 4, elapsed
    message = str(info.value)
    assert f"http://127.0.0.1:{hanging_server}" in message and "secret" not in message and "user" not in message


def test_server_errors_carry_no_body_or_credentials():
    class Refusing:
        def count(self, **kwargs):
            raise UnexpectedResponse(status_code=400, reason_phrase="Bad Request", headers={},
                                     content=b'{"status": {"error": "Wrong input: no field n"}, "token": "s3cr3t"}')

        def get_collection(self, name):
            raise UnexpectedResponse(status_code=404, reason_phrase="Not Found", headers={},
                                     content=b'{"status": {"error": "Collection c not found"}, "token": "s3cr3t"}')

    c = ClientCollection(Refusing(), "c", location="http://u:pw@host:6333", retry=RetryPolicy(attempts=1),
                         server=True, owns_client=False)
    with pytest.raises(QdrantServerError) as info:
        c.count()
    message = str(info.value)
    assert "HTTP 400" in message and "Wrong input" in message
    assert "s3cr3t" not in message and "pw" not in message and "http://host:6333" in message
    with pytest.raises(CollectionNotFoundError) as info:
        c.schema()
    assert "s3cr3t" not in str(info.value)


def test_a_create_retried_after_a_lost_answer_accepts_its_own_collection():
    class LostAnswer:
        """The first create reaches the server but its answer is lost; the retry is told it exists (409)."""

        def __init__(self):
            self.real, self.creates = QdrantClient(":memory:"), 0

        def create_collection(self, **kwargs):
            self.creates += 1
            if self.creates == 1:
                self.real.create_collection(**kwargs)
                raise ResponseHandlingException(TimeoutError("timed out"))
            raise UnexpectedResponse(status_code=409, reason_phrase="Conflict", headers={},
                                     content=b'{"status": {"error": "Collection `c` already exists!"}}')

        def __getattr__(self, name):
            return getattr(self.real, name)

    retry = RetryPolicy(attempts=3, backoff=0.0)
    client = LostAnswer()
    c = ClientCollection(client, "c", location="http://host:6333", retry=retry, server=True, owns_client=False)
    c.create({"image": DIM}, {"crossgap": {"model_id": "m"}})
    assert client.creates == 2 and c.schema().metadata == {"crossgap": {"model_id": "m"}}
    other = ClientCollection(LostAnswer(), "c", location="http://host:6333", retry=retry, server=True,
                             owns_client=False)
    other.client.real.create_collection("c", vectors_config={"text": models.VectorParams(
        size=DIM, distance=models.Distance.COSINE)})  # someone else's collection under the name
    other.client.creates = 1
    with pytest.raises(QdrantServerError, match="409"):
        other.create({"image": DIM}, {"crossgap": {"model_id": "m"}})


@pytest.fixture
def refusing_server():
    """A loopback HTTP server that answers every request with one status and a body holding a secret."""
    state = {"status": 400}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"status": {"error": "Wrong input"}, "token": "TOPSECRETBODY"}'
            self.send_response(state["status"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], state
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status, error", [(400, QdrantServerError), (404, QdrantServerError),
                                           (401, PermissionError)])
def test_refused_connection_names_status_without_body_or_password(refusing_server, status, error):
    port, state = refusing_server
    state["status"] = status
    with pytest.raises(error) as info:
        open_collection(f"http://user:hunter2@127.0.0.1:{port}", "c", retry=RetryPolicy(attempts=1, deadline=5),
                        client_kwargs={"check_compatibility": False})
    message = str(info.value)
    assert f"HTTP {status}" in message and f"http://127.0.0.1:{port}" in message
    assert "TOPSECRETBODY" not in message and "hunter2" not in message and "user" not in message


def test_malformed_server_url_is_named_without_its_password():
    with pytest.raises(ValueError) as info:
        open_collection("http://user:hunter2@host:notaport", "c")
    assert "hunter2" not in str(info.value) and "numeric port" in str(info.value)
