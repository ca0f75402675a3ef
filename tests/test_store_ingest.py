"""Ingestion on both engines: content ids, resumability, the id policy, validation, backfills."""

import os
import uuid

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from qdrant_client import models

from crossgap_qdrant.errors import CrossgapError
from crossgap_qdrant.inversion import BATCH_INVARIANCE_BOUND
from crossgap_qdrant.models import encode_images, encode_texts
from crossgap_qdrant.store import IdConflictError, VectorNames, image_bytes_id, schema, text_id
from tests.support.store import images, stored_vectors, unit


def test_folder_ingestion_skips_corrupt_files_and_keeps_the_rest(stores, tiny_clip, tmp_path):
    (tmp_path / "in" / "sub" / "deeper").mkdir(parents=True)
    root = tmp_path / "in"
    paths = [root / "a.png", root / "sub" / "b.jpg", root / "sub" / "deeper" / "c.PNG"]
    for path, image in zip(paths, images(3)):
        image.save(path, format="PNG" if path.suffix.lower() == ".png" else "JPEG")
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    store = stores.make()
    report = store.ingest_images(root, progress=False)
    assert report.inserted == 3 and report.inverted == 3
    assert [os.path.basename(item) for item, _ in report.failed] == ["broken.jpg"]
    reason = report.failed[0][1]  # the item names the file; the reason does not repeat it
    assert reason == "not an image file PIL can read"
    assert store.count() == 3
    expected = {image_bytes_id(p.read_bytes()): str(p) for p in paths}
    records = store.collection.retrieve(list(expected), with_payload=True, with_vectors=True)
    assert {str(r.id): r.payload["source"] for r in records} == expected
    assert all(set(r.vector) == {"image", "image_oti"} for r in records)
    native = torch.tensor([r.vector["image"] for r in sorted(records, key=lambda r: r.payload["source"])])
    reference = encode_images(tiny_clip.model, tiny_clip.preprocess, sorted(str(p) for p in paths))
    torch.testing.assert_close(native, reference, atol=1e-5, rtol=1e-5)
    assert report.seconds_inversion > 0 and report.seconds_database > 0 and report.seconds_encoding > 0


def test_unreadable_path_is_reported(stores, tmp_path):
    good = tmp_path / "good.png"
    images(1)[0].save(good)
    store = stores.make()
    report = store.ingest_images([str(good), str(tmp_path / "missing.png")], progress=False)
    assert report.inserted == 1 and report.ids[1] is None
    assert report.failed[0][0].endswith("missing.png") and "FileNotFoundError" in report.failed[0][1]


def test_rerun_is_idempotent_and_ids_come_from_content(stores):
    store = stores.make()
    pil = images(4)
    first = store.ingest_images(pil + [pil[0]], payloads=[{"k": i} for i in range(5)], progress=False)
    assert first.inserted == 4 and first.duplicates == 1 and first.ids[4] == first.ids[0]
    again = stores.make().ingest_images(pil, progress=False)
    assert (again.inserted, again.skipped_existing, again.inverted) == (0, 4, 0)
    assert again.ids == first.ids[:4]
    payload = stores.make().collection.retrieve([first.ids[2]], with_payload=True)[0].payload
    assert payload["modality"] == "image" and payload["k"] == 2 and payload["content_sha256"].startswith("image:")


def test_resume_inverts_only_what_lacks_the_inverted_vector(stores, monkeypatch):
    store = stores.make()
    features = unit(10)
    store.ingest_images(features[:6], progress=False)  # complete
    store.ingest_images(features[6:], invert=False, progress=False)  # native only, as after a crash
    inverted_rows = []
    invert = store.encoder.invert
    monkeypatch.setattr(store.encoder, "invert", lambda m, f, keys, progress=False: inverted_rows.append(len(keys))
                        or invert(m, f, keys, progress))
    report = store.ingest_images(features, batch_size=4, progress=False)
    assert sum(inverted_rows) == 4 and report.inverted == 4
    assert (report.inserted, report.skipped_existing) == (0, 6)
    assert all(v is not None for v in stored_vectors(store, report.ids, "image_oti"))


def test_inverted_vector_does_not_depend_on_batching(stores):
    features = unit(6)
    a = stores.make("a")
    b = stores.make("b")
    ra = a.ingest_images(features, batch_size=6, progress=False)
    b.ingest_images(features[3:], batch_size=2, progress=False)
    rb = b.ingest_images(features, batch_size=4, progress=False)
    assert ra.ids == rb.ids
    va = torch.tensor(stored_vectors(a, ra.ids, "image_oti"))
    vb = torch.tensor(stored_vectors(b, rb.ids, "image_oti"))
    assert (va - vb).abs().max() <= BATCH_INVARIANCE_BOUND
    assert not torch.allclose(va, torch.tensor(stored_vectors(a, ra.ids, "image")), atol=1e-2)


@pytest.mark.parametrize("bad, match", [
    ("nan", "NaN or inf"), ("inf", "NaN or inf"), ("dim", r"\[N, 32\]"), ("zero", "all-zero"),
])
def test_bad_features_are_refused_before_anything_is_written(stores, bad, match):
    store = stores.make()
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


def test_huge_finite_features_are_stored_as_unit_vectors(stores):
    store = stores.make()
    features = unit(4)
    features[1] *= 1e38  # the plain norm overflows to inf: the old code stored an all-zero vector
    report = store.ingest_images(features, progress=False)
    stored = torch.tensor(stored_vectors(store, report.ids, "image"))
    torch.testing.assert_close(stored.norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(stored[1], unit(4)[1], atol=1e-5, rtol=0)
    hits = store.search_images(image=features[1], mode="native", limit=1, exclude_query=False)
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_mismatched_payloads_and_bad_ids_are_refused(stores):
    store = stores.make()
    with pytest.raises(ValueError, match="2 payloads for 3"):
        store.ingest_images(unit(3), payloads=[{}, {}], progress=False)
    with pytest.raises(ValueError, match="invalid point id"):
        store.ingest_images(unit(2), ids=[1, "not-a-uuid"], progress=False)
    with pytest.raises(ValueError, match=r"2\*\*64"):
        store.ingest_images(unit(1), ids=[2**64], progress=False)
    assert store.count() == 0


def test_given_ids_and_precomputed_inverted_vectors(stores, monkeypatch):
    store = stores.make()
    monkeypatch.setattr(store.encoder, "invert", None)  # must not run
    pid = uuid.uuid4()
    report = store.ingest_texts(unit(2), ids=[7, pid], inverted_features=unit(2, seed=5), progress=False)
    assert report.ids == [7, str(pid)] and report.inverted == 2
    torch.testing.assert_close(torch.tensor(stored_vectors(store, [7], "text_ovi")[0]), unit(2, seed=5)[0])


def test_payload_keys_the_store_writes_are_refused(stores):
    store = stores.make()
    for payload, key in (({"modality": "photo"}, "modality"), ({"content_sha256": "x"}, "content_sha256"),
                         ({"text": "other"}, "text")):
        with pytest.raises(ValueError, match=f"payload #0 sets '{key}'"):
            store.ingest_texts(["a cat"], payloads=[payload], progress=False)
    assert store.count() == 0
    # a PIL image has no source file: the caller may record where it came from
    report = store.ingest_images(images(1), payloads=[{"source": "https://example.org/cat.png"}], progress=False)
    assert report.inserted == 1 and store.ingest_images(images(1), progress=False).skipped_existing == 1


def test_rerun_with_new_payloads_merges_them_into_stored_points(stores):
    store = stores.make()
    first = store.ingest_texts(["a cat", "a dog"], payloads=[{"label": "old", "keep": 1}, None], progress=False)
    again = store.ingest_texts(["a cat", "a dog"], payloads=[{"label": "new"}, {"label": "dog"}], progress=False)
    assert (again.inserted, again.skipped_existing) == (0, 2)
    stored = {r.id: r.payload for r in store.collection.retrieve(first.ids, with_payload=True)}
    assert stored[first.ids[0]]["label"] == "new" and stored[first.ids[0]]["keep"] == 1
    assert stored[first.ids[1]]["label"] == "dog" and stored[first.ids[1]]["text"] == "a dog"


def test_id_policy_refuses_other_content_other_modality_and_repeats(stores):
    store = stores.make()
    store.ingest_texts(["a cat", "a dog"], ids=[1, 2], progress=False)
    with pytest.raises(IdConflictError, match="other content.*overwrite"):
        store.ingest_texts(["a car", "a bird"], ids=[3, 1], progress=False)
    with pytest.raises(IdConflictError, match="stored text"):
        store.ingest_images(images(1), ids=[2], progress=False)
    with pytest.raises(IdConflictError, match="unique within a call"):
        store.ingest_texts(["x", "y"], ids=[5, 5], progress=False)
    assert store.count() == 2  # nothing of the refused calls was written (3 -> "a car" neither)
    payloads = {r.id: r.payload["text"] for r in store.collection.retrieve([1, 2], with_payload=True)}
    assert payloads == {1: "a cat", 2: "a dog"}
    # the same content under the same id is fine; overwrite replaces the point whole
    assert store.ingest_texts(["a cat"], ids=[1], progress=False).skipped_existing == 1
    report = store.ingest_texts(["a horse"], ids=[1], overwrite=True, progress=False)
    assert report.inserted == 1 and report.inverted == 1
    record = store.collection.retrieve([1], with_payload=True, with_vectors=True)[0]
    assert record.payload["text"] == "a horse" and set(record.vector) == {"text", "text_ovi"}
    torch.testing.assert_close(torch.tensor(record.vector["text"]),
                               encode_texts(store.clip.model, store.clip.tokenizer, ["a horse"])[0], atol=1e-5,
                               rtol=1e-5)


def test_texts_from_a_file_and_a_list(stores, tiny_clip, tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("a photo of a cat\n\n  \na red car\n", encoding="utf-8")
    store = stores.make()
    report = store.ingest_texts(path, progress=False)
    assert report.inserted == 2 and report.ids == [text_id("a photo of a cat"), text_id("a red car")]
    record = store.collection.retrieve([report.ids[1]], with_payload=True, with_vectors=True)[0]
    assert {k: v for k, v in record.payload.items() if k != "content_sha256"} == {
        "modality": "text", "text": "a red car", "source": str(path), "line": 4}
    assert set(record.vector) == {"text", "text_ovi"}
    torch.testing.assert_close(torch.tensor(record.vector["text"]),
                               encode_texts(tiny_clip.model, tiny_clip.tokenizer, ["a red car"])[0], atol=1e-5,
                               rtol=1e-5)
    listed = store.ingest_texts(["a red car", "", "a dog"], progress=False)
    assert (listed.inserted, listed.skipped_existing) == (1, 1)
    assert listed.failed == [("", "ValueError: empty text")]
    with pytest.raises(FileNotFoundError, match="list of strings"):
        store.ingest_texts("a single string that is no file", progress=False)


def test_backfill_of_a_collection_with_existing_clip_vectors(stores, tiny_clip):
    collection = stores.collection("legacy")
    collection.create({"clip": 32}, {})
    native = encode_images(tiny_clip.model, tiny_clip.preprocess, images(5))
    collection.upsert([models.PointStruct(id=i, vector={"clip": v.tolist()}, payload={"n": i})
                       for i, v in enumerate(native)])
    bad = [float("nan")] * 32  # written by another tool: must not stop the backfill of the others
    try:
        collection.upsert([models.PointStruct(id=9, vector={"clip": bad}, payload={})])
        bad_stored = 1
    except ValueError:  # qdrant-client's local mode refuses NaN itself
        bad_stored = 0
    store = stores.make("legacy", vector_names=VectorNames(image="clip"))
    schema = store.collection.schema()
    assert set(schema.vectors) == {"clip", "image_oti", "text", "text_ovi"}
    assert schema.metadata["crossgap"]["model_id"] == tiny_clip.model_id
    report = store.invert_missing("image", batch_size=2, progress=False)
    assert report.inverted == 5 and sorted(report.ids) == list(range(5))
    assert [pid for pid, _ in report.failed] == [9] * bad_stored
    assert all("NaN" in reason for _, reason in report.failed)
    records = sorted(store.collection.retrieve(list(range(5)), with_payload=True, with_vectors=True),
                     key=lambda r: r.id)
    assert all(set(r.vector) == {"clip", "image_oti"} and r.payload == {"n": r.id} for r in records)
    torch.testing.assert_close(torch.tensor([r.vector["clip"] for r in records]), native, atol=1e-5, rtol=1e-5)
    again = store.invert_missing("image", progress=False)
    assert again.inverted == 0 and len(again.failed) == bad_stored


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


def test_derived_vectors_are_filled_from_raw_inputs_and_searchable(stores, tiny_clip):
    store = stores.make(derived_vectors={"pixel_mean": PixelMean(), "tokens": TokenCount()})
    schema = store.collection.schema()
    assert schema.vectors["pixel_mean"].size == 4 and schema.vectors["tokens"].size == 2
    pil = images(4)
    first = store.ingest_images(pil[:2], progress=False)
    pixels = torch.stack([tiny_clip.preprocess(im) for im in pil[:2]])
    expected = F.normalize(PixelMean().compute(None, pixels), dim=-1)
    torch.testing.assert_close(torch.tensor(stored_vectors(store, first.ids, "pixel_mean")), expected)
    text = store.ingest_texts(["one two three"], progress=False)
    assert stored_vectors(store, text.ids, "tokens")[0] is not None
    # from features there are no raw inputs: the derived vector is left out; raw images under the same ids are
    # other content, so filling them in is an explicit overwrite
    native = encode_images(tiny_clip.model, tiny_clip.preprocess, pil[2:])
    from_features = store.ingest_images(native, ids=[11, 12], progress=False)
    assert stored_vectors(store, [11, 12], "pixel_mean") == [None, None] and from_features.inverted == 2
    with pytest.raises(IdConflictError):
        store.ingest_images(pil[2:], ids=[11, 12], progress=False)
    later = store.ingest_images(pil[2:], ids=[11, 12], overwrite=True, progress=False)
    assert later.inserted == 2
    assert all(v is not None for v in stored_vectors(store, [11, 12], "pixel_mean"))
    hits = store.search_images(pil[0], mode="pixel_mean", limit=3, exclude_query=False)
    assert str(hits[0].id) == first.ids[0] and hits[0].score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="raw input"):
        store.search_images(native[0], mode="pixel_mean")


def test_sources_are_recorded_as_absolute_paths(stores, tmp_path, monkeypatch):
    (tmp_path / "pics").mkdir()
    images(1)[0].save(tmp_path / "pics" / "a.png")
    (tmp_path / "captions.txt").write_text("a cat\n")
    monkeypatch.chdir(tmp_path)
    store = stores.make()
    ids = store.ingest_images("pics", progress=False).ids + store.ingest_texts("captions.txt", progress=False).ids
    sources = {r.payload["source"] for r in store.collection.retrieve(ids, with_payload=True)}
    assert sources == {str(tmp_path / "pics" / "a.png"), str(tmp_path / "captions.txt")}


def test_id_policy_refuses_points_written_elsewhere(stores):
    store = stores.make()
    foreign = unit(1, seed=1)[0].tolist()
    store.collection.upsert([models.PointStruct(id=7, vector={"image": foreign}, payload={"modality": "image"})])
    with pytest.raises(IdConflictError, match="content is unknown"):
        store.ingest_images(unit(1, seed=5), ids=[7], progress=False)
    assert stored_vectors(store, [7], "image")[0] == pytest.approx(foreign, abs=1e-6)
    report = store.ingest_images(unit(1, seed=5), ids=[7], overwrite=True, progress=False)
    assert report.inserted == 1 and stored_vectors(store, [7], "image")[0] != pytest.approx(foreign, abs=1e-3)


def test_image_background_is_configurable(stores, tiny_clip):
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((200, 30, 30, 255), (8, 8, 24, 24))
    flat = {}
    for colour in ((255, 255, 255), (0, 0, 0)):
        image = Image.new("RGB", (32, 32), colour)
        image.paste((200, 30, 30), (8, 8, 24, 24))
        flat[colour] = encode_images(tiny_clip, [image])[0]
    for name, colour in (("white", None), ("black", (0, 0, 0))):
        store = stores.make(name, **({} if colour is None else {"image_background": colour}))
        pid = store.ingest_images([rgba], invert=False, progress=False).ids[0]
        stored = torch.tensor(stored_vectors(store, [pid], "image")[0])
        torch.testing.assert_close(stored, flat[colour or (255, 255, 255)], atol=1e-5, rtol=1e-5)


def test_payload_keys_the_store_derives_are_refused(stores, monkeypatch):
    store = stores.make()
    report = store.ingest_texts(["a cat", "a dog"], progress=False)
    store.fit_hubness("text", "native")
    for payload in ({"hub_text_native": -1e6}, {"hub_text_native": "high"}, {"hub_anything": 1.0}):
        for texts in (["a bird"], ["a cat"]):  # a new item, and a payload merged into a stored one
            with pytest.raises(CrossgapError, match="payload #0 sets 'hub_"):
                store.ingest_texts(texts, payloads=[payload], progress=False)
    monkeypatch.setattr(schema, "DERIVED_KEY_KINDS", schema.DERIVED_KEY_KINDS + ("pca",))  # a future kind
    with pytest.raises(ValueError, match="payload #0 sets 'pca_text'"):
        store.ingest_texts(["a bird"], payloads=[{"pca_text": 0.5}], progress=False)
    assert store.count() == 2
    hits = store.search_texts("a cat", mode="native", hubness=True, limit=2)
    assert [str(h.id) for h in hits] == [str(report.ids[1])] and abs(hits[0].score) < 10
