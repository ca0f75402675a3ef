"""The model identity beyond the metadata: with collection.json deleted, another model is refused by its vectors."""

import os

import pytest

from crossgap_qdrant.store import CrossModalStore, SchemaMismatchError
from crossgap_qdrant.store.errors import ModelMismatchError
from tests.support.store import FAST, images, unit


@pytest.mark.parametrize("modality", ["text", "image"])
def test_deleting_collection_json_does_not_allow_model_mixing(tiny_clip, tiny_bidir, tmp_path, modality):
    folder = str(tmp_path / "q")
    files = []
    for i, image in enumerate(images(3, seed=2)):
        files.append(str(tmp_path / f"{i}.png"))
        image.save(files[-1])
    with CrossModalStore.open(folder, "g", tiny_clip, **FAST) as store:
        if modality == "text":
            store.ingest_texts(["a cat", "a dog", "a car"], progress=False)
        else:
            store.ingest_images(files, progress=False)
    os.remove(os.path.join(folder, "g", "collection.json"))
    assert tiny_bidir.model_id != tiny_clip.model_id  # another model of the same width (32)
    with pytest.raises(ModelMismatchError, match="not made by this model") as info:
        CrossModalStore.open(folder, "g", tiny_bidir, **FAST)
    assert isinstance(info.value, SchemaMismatchError) and "cosine" in str(info.value)
    with CrossModalStore.open(folder, "g", tiny_clip, **FAST) as store:  # its own model: accepted, recorded again
        assert store.count() == 3 and store.info()["model_id"] == tiny_clip.model_id
    with pytest.raises(SchemaMismatchError):
        CrossModalStore.open(folder, "g", tiny_bidir, **FAST)


def test_a_collection_without_sources_cannot_be_checked_and_says_so(tiny_clip, tmp_path, caplog):

    folder = str(tmp_path / "q")
    with CrossModalStore.open(folder, "g", tiny_clip, **FAST) as store:
        store.ingest_images(unit(4), progress=False)
    os.remove(os.path.join(folder, "g", "collection.json"))
    with CrossModalStore.open(folder, "g", tiny_clip, **FAST) as store:
        assert store.count() == 4
    assert "cannot check that it was built with this model" in caplog.text
