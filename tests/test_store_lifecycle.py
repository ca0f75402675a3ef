"""The collection's life on both engines: schema and model checks, folders, locks, reads that never write,
crashes, and the qdrant-client specifics (server options, retries)."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException

from crossgap_qdrant.store import (
    CollectionNotFoundError,
    CrossModalStore,
    RetryPolicy,
    SchemaMismatchError,
    StoreLockedError,
    VectorNames,
    features_id,
    open_collection,
)
from tests.support.store import FAST, all_records, stored_vectors, unit
from tests.support.store_kill_worker import COLLECTION, synthetic_features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The helper process runs as a module of the repository, whatever the working directory.
WORKER = [sys.executable, "-m", "tests.support.store_kill_worker"]
WORKER_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
              "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


# ---------------------------------------------------------------------------------------------- schema
def test_collection_created_with_named_vectors_and_model_metadata(stores, tiny_clip):
    store = stores.make()
    schema = store.collection.schema()
    assert set(schema.vectors) == {"image", "image_oti", "text", "text_ovi"}
    assert all(v.size == 32 and v.distance.lower() == "cosine" for v in schema.vectors.values())
    recorded = schema.metadata["crossgap"]
    assert recorded["model_id"] == tiny_clip.model_id and "/" not in recorded["model"]
    info = store.info()
    assert info["model_id"] == tiny_clip.model_id and info["points"] == 0
    assert info["engine"] == ("qdrant-edge" if stores.engine == "edge" else "qdrant-client")
    assert info["vectors"]["image_oti"] == {"size": 32, "distance": "Cosine", "points": 0}


def test_collection_of_another_model_is_refused(stores, tiny_clip):
    stores.make()
    with pytest.raises(SchemaMismatchError, match="another-model") as err:
        stores.make(model_id="another-model")
    assert tiny_clip.model_id in str(err.value)


def test_collection_with_wrong_vector_size_is_refused(stores):
    stores.collection("gallery").create({"image": 16}, {})
    with pytest.raises(SchemaMismatchError, match="size 16"):
        stores.make()


def test_wrong_distance_and_unnamed_vectors_are_refused(tiny_clip):
    client = QdrantClient(":memory:")
    client.create_collection("dot", vectors_config={"image": models.VectorParams(size=32,
                                                                                  distance=models.Distance.DOT)})
    client.create_collection("unnamed", vectors_config=models.VectorParams(size=32, distance=models.Distance.COSINE))
    with pytest.raises(SchemaMismatchError, match="Dot"):
        CrossModalStore(client, "dot", tiny_clip, **FAST)
    with pytest.raises(SchemaMismatchError, match="unnamed"):
        CrossModalStore(client, "unnamed", tiny_clip, **FAST)


def test_vector_names_are_configurable(stores):
    names = VectorNames(image="img", image_oti="img_t", text="txt", text_ovi="txt_i")
    store = stores.make(vector_names=names)
    report = store.ingest_images(unit(3), progress=False)
    assert set(store.collection.schema().vectors) == {"img", "img_t", "txt", "txt_i"}
    assert all(v is not None for v in stored_vectors(store, report.ids, "img_t"))


def test_swapped_tokenizer_and_preprocess_are_caught(tiny_clip):
    model, preprocess, tokenizer = tiny_clip
    with pytest.raises(TypeError):
        CrossModalStore(QdrantClient(":memory:"), "g", model, tokenizer, preprocess)  # old positional order
    with pytest.raises(TypeError, match="swapped"):
        CrossModalStore(QdrantClient(":memory:"), "g", model, tokenizer=preprocess, preprocess=tokenizer)


# ----------------------------------------------------------------------------------------------- folders
@pytest.mark.parametrize("engine", ["edge", "local"])
def test_folder_is_persistent_and_locked(tiny_clip, tmp_path, engine):
    folder = str(tmp_path / "qdrant")
    with CrossModalStore.open(folder, "gallery", tiny_clip, engine=engine, **FAST) as store:
        report = store.ingest_texts(["a cat", "a dog"], progress=False)
        with pytest.raises(StoreLockedError, match="already open"):
            CrossModalStore.open(folder, "gallery", tiny_clip, engine=engine).search_texts("a cat")
        with pytest.raises(ValueError, match="api_key is for Qdrant servers"):
            CrossModalStore.open(str(tmp_path / "other"), "g", tiny_clip, engine=engine, api_key="secret")
    with CrossModalStore.open(folder, "gallery", tiny_clip, engine=engine, **FAST) as store:
        assert store.count() == 2 and store.info()["vectors"]["text_ovi"]["points"] == 2
        assert store.ingest_texts(["a cat", "a dog"], progress=False).skipped_existing == 2
        assert {str(r.id) for r in all_records(store, False)} == {str(i) for i in report.ids}
    with pytest.raises(SchemaMismatchError, match="another-model"):
        CrossModalStore.open(folder, "gallery", tiny_clip, engine=engine, model_id="another-model")


def test_reads_never_create_folders_or_collections(tiny_clip, tmp_path):
    missing = tmp_path / "nothing-here"
    with pytest.raises(CollectionNotFoundError, match="nothing is created"):
        CrossModalStore.open(str(missing), "gallery", tiny_clip, create=False)
    assert not missing.exists()
    with CrossModalStore.open(str(tmp_path / "q"), "photos", tiny_clip, **FAST) as store:
        store.ingest_texts(["a cat"], progress=False)
    before = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "q").rglob("*"))
    with pytest.raises(CollectionNotFoundError, match="'photoz'"):
        CrossModalStore.open(str(tmp_path / "q"), "photoz", tiny_clip, create=False)
    collection = open_collection(str(tmp_path / "q"), "photoz")
    assert not collection.exists()
    collection.close()
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "q").rglob("*")) == before


@pytest.mark.parametrize("engine", ["edge", "local"])
def test_open_creates_the_collection_on_its_first_write_and_a_failed_ingest_leaves_none(tiny_clip, tmp_path,
                                                                                         engine):
    folder, bad = str(tmp_path / "q"), tmp_path / "bad.png"
    bad.write_bytes(b"not a png")

    def exists(name):
        collection = open_collection(folder, name, engine=engine)
        try:
            return collection.exists()
        finally:
            collection.close()

    with CrossModalStore.open(folder, "photoz", tiny_clip, engine=engine, **FAST) as store:  # a mistyped name
        with pytest.raises(CollectionNotFoundError, match="'photoz'.*nothing is created by a read"):
            store.search_images(text="a cat")
        with pytest.raises(CollectionNotFoundError):
            store.info()
        assert store.count() == 0 and not store.created
    assert not exists("photoz")
    with CrossModalStore.open(folder, "photos", tiny_clip, engine=engine, **FAST) as store:
        report = store.ingest_images([str(bad)], invert=False, progress=False)  # every item fails
        assert report.failed and not store.created
        with pytest.raises(ValueError):
            store.ingest_images(unit(2, tiny_clip.embed_dim) * float("nan"), progress=False)  # refused
        assert not store.created
    assert not exists("photos")
    with CrossModalStore.open(folder, "photos", tiny_clip, engine=engine, **FAST) as store:
        store.ingest_texts(["a cat"], invert=False, progress=False)
        assert store.created and store.count() == 1
    with CrossModalStore.open(folder, "photos", tiny_clip, engine=engine, create=False) as store:
        assert store.count() == 1 and not store.created


# ------------------------------------------------------------------------------------------------ crashes
def _kill_during_second_batch(worker, env) -> None:
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


def _stored(engine, folder):
    collection = open_collection(folder, COLLECTION, engine=engine)
    try:
        has = models.Filter(must=[models.HasVectorCondition(has_vector="image_oti")])
        records, offset = [], None
        while True:
            page, offset = collection.scroll(limit=256, offset=offset, with_vectors=True)
            records += page
            if offset is None:
                break
        return collection.count(), collection.count(has), records
    finally:
        collection.close()


@pytest.mark.parametrize("engine", ["edge", "local"])
def test_sigkill_mid_ingestion_then_rerun_stores_every_item_once(tiny_clip, tmp_path, engine):
    folder, n, batch = str(tmp_path / "qdrant"), 20, 4
    worker = [*WORKER, engine, folder, str(n), str(batch)]
    env = WORKER_ENV
    _kill_during_second_batch(worker, env)
    points_before, inverted_before, _ = _stored(engine, folder)
    assert (points_before, inverted_before) == (batch, batch)

    done = subprocess.run(worker + ["0"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.split("REPORT ", 1)[1])
    assert report == {"inserted": n - points_before, "skipped_existing": inverted_before,
                      "inverted": n - inverted_before, "duplicates": 0}
    points, inverted, records = _stored(engine, folder)
    expected = sorted(features_id("image", row) for row in synthetic_features(n))
    assert sorted(str(r.id) for r in records) == expected and points == inverted == n
    assert all(set(r.vector) == {"image", "image_oti"} for r in records)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["edge", "local"])
def test_repeated_sigkills_at_random_moments_lose_and_duplicate_nothing(tmp_path, engine):
    """25 SIGKILLs at random moments of a 200-item ingest, then a rerun: every item stored once, inverted."""
    folder, n = str(tmp_path / "qdrant"), 200
    worker = [*WORKER, engine, folder, str(n), "8", "0"]
    env = WORKER_ENV
    rng = random.Random(0)
    for _ in range(25):
        proc = subprocess.Popen(worker, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        assert proc.stdout.readline().strip() == "READY"  # start-up (imports, model) takes seconds on a busy CPU
        time.sleep(rng.uniform(0.0, 1.5))  # a random moment of the ingestion (all of it takes about 2 s)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        _stored(engine, folder)  # the folder opens after every kill
    done = subprocess.run(worker, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    points, inverted, records = _stored(engine, folder)
    expected = sorted(features_id("image", row) for row in synthetic_features(n))
    assert sorted(str(r.id) for r in records) == expected and points == inverted == n


# ---------------------------------------------------------------------------------- qdrant-client specifics
class RecordingClient:
    """A QdrantClient (":memory:") that records every call made to it: the requests a server would get."""

    _client = None  # looks like a server client, not local mode

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


@pytest.mark.filterwarnings("ignore:Local mode performs exact")
def test_server_options_reach_the_requests(tiny_clip):
    client = RecordingClient()
    quantization = models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8))
    store = CrossModalStore(client, "gallery", tiny_clip, shard_number=3, replication_factor=2,
                            quantization_config=quantization, on_disk=True, oversampling=2.0, **FAST)
    created = client.named("create_collection")[0]
    assert created["shard_number"] == 3 and created["replication_factor"] == 2
    assert created["quantization_config"] == quantization
    assert all(v.on_disk for v in created["vectors_config"].values())
    store.ingest_images(unit(4), progress=False)
    assert all(kwargs["wait"] for kwargs in client.named("upsert") + client.named("update_vectors"))
    store.search_images(unit(1)[0], mode="gallery_inverted")
    sent = [r for kwargs in client.named("query_batch_points") for r in kwargs["requests"]] + [
        kwargs for kwargs in client.named("query_points")]
    last = sent[-1]
    params = last.params if hasattr(last, "params") else last["search_params"]
    assert params.quantization.rescore is True and params.quantization.oversampling == 2.0


def test_transient_errors_are_retried_then_succeed(tiny_clip):
    client = FlakyClient("upsert", 2, ResponseHandlingException(ConnectionError("connection reset")))
    store = CrossModalStore(client, "gallery", tiny_clip, retry=RetryPolicy(attempts=3, backoff=0.01), **FAST)
    report = store.ingest_images(unit(3), progress=False)
    assert report.inserted == 3 and store.count() == 3 and len(client.named("upsert")) == 3


def test_exhausted_retries_name_the_server(tiny_clip):
    client = FlakyClient("query_batch_points", 10, ResponseHandlingException(TimeoutError("timed out")))
    store = CrossModalStore(client, "gallery", tiny_clip, retry=RetryPolicy(attempts=2, backoff=0.0), **FAST)
    store.ingest_images(unit(2), progress=False)
    with pytest.raises(ConnectionError, match=r"http://recorded:6333.*2 attempt"):
        store.search_images(unit(1)[0], mode="native")
    assert len(client.named("query_batch_points")) == 2


def test_other_errors_are_not_retried(tiny_clip):
    client = FlakyClient("count", 1, ValueError("bad request"))
    store = CrossModalStore(client, "gallery", tiny_clip, **FAST)
    with pytest.raises(ValueError, match="bad request"):
        store.count()
    assert len(client.named("count")) == 1


def test_unreachable_server_gives_a_connection_error_naming_the_url_not_the_password(tiny_clip):
    url = "http://admin:hunter2@127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(ConnectionError, match="127.0.0.1:9") as err:
        CrossModalStore.open(url, "gallery", tiny_clip, timeout=2, retry=RetryPolicy(attempts=2, backoff=0.01))
    assert "hunter2" not in str(err.value) and "admin" not in str(err.value)
