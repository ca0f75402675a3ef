"""What a collection records beyond its points (default modes, hubness, derived vectors, warm starts) survives
other stores on the same collection and failed writes."""

import os

import pytest
from qdrant_client import QdrantClient

from crossgap_qdrant.models import encode_pixels
from crossgap_qdrant.store import CrossModalStore
from crossgap_qdrant.store import warm as warm_lib
from crossgap_qdrant.store.schema import METADATA_KEY
from tests.support.store import FAST, Stores, images


class Negated:
    """A derived image vector without a record(): it cannot be rebuilt from the metadata."""

    modality, dim = "image", 32

    def compute(self, model, inputs):
        return -encode_pixels(model, inputs)


def _recorded(store):
    return store.collection.schema().metadata[METADATA_KEY]


def test_a_second_store_keeps_what_the_first_recorded(tiny_clip):
    client = QdrantClient(":memory:")
    first = CrossModalStore(client, "g", tiny_clip, **FAST)
    first.ingest_images(images(6), progress=False)
    second = CrossModalStore(client, "g", tiny_clip, **FAST)  # opened before the first records anything
    first.fit_hubness("image", "gallery_inverted")
    second.set_default_mode("text", "native")
    recorded = _recorded(first)
    assert "gallery_inverted" in recorded["hubness"]["image"] and recorded["default_modes"] == {"text": "native"}
    third = CrossModalStore(client, "g", tiny_clip, **FAST)
    assert len(third.search_images(images(1, seed=9)[0], mode="gallery_inverted", hubness=True, limit=2)) == 2


def test_reopening_without_a_derived_vector_keeps_its_record(tiny_clip):
    client = QdrantClient(":memory:")
    first = CrossModalStore(client, "g", tiny_clip, derived_vectors={"neg": Negated()}, **FAST)
    first.ingest_images(images(4), progress=False)
    first.set_default_mode("image", "neg")
    plain = CrossModalStore(client, "g", tiny_clip, **FAST)
    assert set(_recorded(plain)["derived"]) == {"neg"} and set(plain.info()["derived_vectors"]) == {"neg"}


def test_hubness_recorded_for_the_default_mode_is_applied(tiny_clip):
    store = CrossModalStore(QdrantClient(":memory:"), "g", tiny_clip, **FAST)
    store.ingest_images(images(6), progress=False)
    store.fit_hubness("image", "gallery_inverted")
    store.set_default_mode("image", None, hubness=True)  # None: the default mode, gallery_inverted
    assert store.default_hubness("image")
    assert store.hub_correction("image", store.default_mode("image"), None) is not None


def test_a_failed_record_keeps_the_previous_warm_start(tiny_clip, tmp_path, monkeypatch):
    stores = Stores("edge", tmp_path, tiny_clip)
    store = stores.make()
    store.ingest_images(images(8, seed=4), progress=False)
    store.fit_warm_start("image", sample=6, steps=1, epochs=2, hidden=32, progress=False)
    path = tmp_path / "edge" / "gallery" / "warm_start_oti.pt"
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.collection, "set_metadata", full_disk)
    with pytest.raises(OSError, match="No space"):
        store.fit_warm_start("image", sample=6, steps=1, epochs=3, hidden=48, progress=False)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not [f for f in os.listdir(path.parent) if ".new-" in f or ".previous-" in f]
    reopened = stores.make(warm_start=True)  # the recorded warm start still loads (its SHA-256 matches)
    assert reopened.encoder.oti_config.warm_start is not None and reopened.encoder.oti_config.steps == 1
    stores.close()


@pytest.mark.parametrize("modality,default", [("image", 2000), ("text", 200)])
def test_a_fit_samples_fewer_texts_than_images_by_default(tiny_clip, monkeypatch, tmp_path, modality, default):
    # an exact text inversion is 1000 vision-tower steps: the text default must not mean hours of fitting
    asked = []

    def sample_native(collection, names, modality, sample):
        asked.append(sample)
        raise RuntimeError("stop here")

    monkeypatch.setattr(warm_lib, "sample_native", sample_native)
    store = CrossModalStore(QdrantClient(":memory:"), "g", tiny_clip, **FAST)
    with pytest.raises(RuntimeError, match="stop here"):
        store.fit_warm_start(modality, path=tmp_path / "warm.pt", progress=False)
    assert asked == [default]
