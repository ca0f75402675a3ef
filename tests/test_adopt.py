"""Adopting collections other tools built: qdrant-client local mode and Edge, an unnamed vector or one named
"clip", int and UUID ids; from the API and the command line."""

import copy
import json
import sys

import pytest
import torch
from qdrant_client import models

from crossgap_qdrant.cli import EXIT_ERROR, EXIT_OK, main
from crossgap_qdrant.errors import MissingDependencyError
from crossgap_qdrant.images import load_pixels
from crossgap_qdrant.inversion import OTIConfig
from crossgap_qdrant.models import load_model
from crossgap_qdrant.rivals import IsoCLIPProjector, ModalityGapShift, fit_pca_projector
from crossgap_qdrant.store import CrossModalStore, SchemaMismatchError
from crossgap_qdrant.store.adopt import MIN_COSINE, NOT_CHECKED
from crossgap_qdrant.store.backfill import BackfillWorker, backfill, missing_count
from crossgap_qdrant.store.backfill_ray import backfill_on_ray
from crossgap_qdrant.store.client_engine import ClientCollection
from crossgap_qdrant.store.companion import CompanionCollection, companion_name
from crossgap_qdrant.store.errors import NotFromStoredVectorsError
from crossgap_qdrant.store.schema import VectorNames
from crossgap_qdrant.store.stored_transforms import add_stored_transform
from tests.support.adopt import NAME, STEPS, make_foreign, snapshot

LAYOUTS = [("local", "", "int"), ("local", "clip", "uuid"), ("edge", "", "uuid"), ("edge", "clip", "int")]
MODES = ("native", "gallery_inverted", "query_inverted", "fused")


@pytest.fixture(scope="module")
def demo():
    return load_model("crossgap-demo", device="cpu")


def adopt(foreign, clip, **kwargs):
    return CrossModalStore.adopt(foreign.location, NAME, clip, native_vector=foreign.vector,
                                 engine="local" if foreign.engine == "local" else None,
                                 oti_config=OTIConfig(steps=STEPS), **kwargs)


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("engine,vector,id_kind", LAYOUTS)
def test_adopt_backfill_search_leaves_user_points_alone(tmp_path, demo, engine, vector, id_kind):
    foreign = make_foreign(tmp_path, demo, engine, vector, id_kind)
    before = snapshot(foreign)
    with adopt(foreign, demo) as store:
        assert isinstance(store.collection, CompanionCollection) == (vector == "")
        info = store.info()
        assert info["adopted"]["check"]["points"] == 8 and info["adopted"]["check"]["min_cosine"] >= MIN_COSINE
        assert info["vectors"]["image_oti"]["points"] == 0 and missing_count(
            store.collection, store.names, "image") == 8
        report = backfill(store.collection, store.encoder, store.names, "image", batch_size=3, workers=2,
                          progress=False)
        assert report.written == 8 and not report.failed
        assert store.info()["vectors"]["image_oti"]["points"] == 8
        assert missing_count(store.collection, store.names, "image") == 0
        # the written vector is OTI of the stored native vector, seeded by the point id, as invert_missing does
        pid = foreign.ids[2]
        record = store.collection.retrieve([pid], with_vectors=True)[0]
        native = torch.tensor([record.vector[store.names.image]])
        expected = store.encoder.invert("image", native, [str(pid)])[0]
        assert torch.allclose(torch.tensor(record.vector["image_oti"]), expected, atol=1e-4)
        for mode in MODES:
            hits = store.search_images(image=pid, mode=mode, limit=3)
            assert len(hits) == 3 and str(pid) not in {str(h.id) for h in hits}, mode
            assert all(h.payload["label"].startswith("class") for h in hits)
        assert len(store.search_images(text="a photo of a cat", limit=2)) == 2
        # a payload filter on a companion-held vector's search

        flt = models.Filter(must=[models.FieldCondition(key="label", match=models.MatchValue(value="class1"))])
        hits = store.search_images(image=pid, mode="gallery_inverted", limit=8, query_filter=flt)
        assert {h.payload["label"] for h in hits} == {"class1"} and len(hits) == 3 - (pid in foreign.ids[1::3])
    after = snapshot(foreign)
    assert after["points"] == before["points"]  # natives and payloads bit-identical, no point added or lost
    if vector == "":
        assert after["vectors"] == before["vectors"] == [""]  # nothing added beside the unnamed vector
    else:
        assert set(after["vectors"]) == {"clip", "image_oti", "text", "text_ovi"}


def test_no_upsert_into_user_points(tmp_path, demo, monkeypatch):
    """Adoption and backfill write nothing but new vectors (update_vectors) and the record."""
    foreign = make_foreign(tmp_path, demo, "local", "clip", "int", n=5)
    calls = []
    monkeypatch.setattr(ClientCollection, "upsert", lambda self, points: calls.append(self.name))
    monkeypatch.setattr(ClientCollection, "set_payload", lambda self, ids, p: calls.append(self.name))
    with adopt(foreign, demo) as store:
        backfill(store.collection, store.encoder, store.names, "image", batch_size=2, progress=False)
        assert store.info()["vectors"]["image_oti"]["points"] == 5
    assert calls == []


def test_reopened_without_names_and_adopted_twice(tmp_path, demo):
    foreign = make_foreign(tmp_path, demo, "edge", "", "int", n=4)
    adopt(foreign, demo).close()
    with adopt(foreign, demo) as store:  # adopting again changes nothing
        assert store.info()["adopted"]["vector"] == ""
    with CrossModalStore.open(foreign.location, NAME, demo, create=False) as store:
        assert isinstance(store.collection, CompanionCollection)
        assert store.collection.companion.name == companion_name(NAME) and store.count() == 4


def test_other_model_refused_nothing_written(tmp_path, demo):
    foreign = make_foreign(tmp_path, demo, "local", "", "uuid", n=4)
    other = copy.deepcopy(demo)
    with torch.no_grad():
        torch.manual_seed(0)
        other.model.visual.proj.add_(0.5 * torch.randn_like(other.model.visual.proj))
    before = snapshot(foreign)
    with pytest.raises(SchemaMismatchError, match=r"cosine .* < 0.99.*another model"):
        adopt(foreign, other)
    collection = foreign.open_raw()
    try:
        assert collection.schema().metadata == {}
        assert not collection.client.collection_exists(companion_name(NAME))
    finally:
        collection.close()
    assert snapshot(foreign) == before


def test_wrong_vector_and_width_refused(tmp_path, demo, tiny_clip):
    foreign = make_foreign(tmp_path, demo, "edge", "clip", "int", n=3)
    with pytest.raises(SchemaMismatchError, match="no vector 'img'"):
        CrossModalStore.adopt(foreign.location, NAME, demo, native_vector="img")
    with pytest.raises(SchemaMismatchError, match="not an unnamed"):
        CrossModalStore.adopt(foreign.location, NAME, demo, native_vector="")
    with pytest.raises(SchemaMismatchError, match="size 128, but the model gives 32"):
        CrossModalStore.adopt(foreign.location, NAME, tiny_clip, native_vector="clip")


def test_unchecked_without_paths(tmp_path, demo, capsys):
    foreign = make_foreign(tmp_path, demo, "local", "clip", "int", n=3, with_paths=False)
    with adopt(foreign, demo) as store:
        assert store.info()["adopted"]["check"] == NOT_CHECKED
    code, out, err = cli(capsys, "info", "--location", foreign.location, "--collection", NAME, "--engine", "local")
    assert code == EXIT_OK, err
    assert "adopted: vector 'clip' (images), model not checked" in out


@pytest.mark.parametrize("engine,vector", [("edge", ""), ("local", "clip")])
def test_parts_are_disjoint_and_cover(tmp_path, demo, engine, vector):
    """Slices (and the id-hash split) give every lacking point to exactly one part."""
    foreign = make_foreign(tmp_path, demo, engine, vector, "uuid", n=12)
    with adopt(foreign, demo) as store:
        for slices in (True, False):
            worker = BackfillWorker(store.collection, store.encoder, store.names, batch_size=5, slices=slices)
            seen = [pid for part in range(3) for ids, _ in worker.pending(part, 3) for pid in ids]
            assert sorted(map(str, seen)) == sorted(map(str, foreign.ids))
        # one part written, then a rerun of the whole: resumes, and rewrites nothing already written
        worker = BackfillWorker(store.collection, store.encoder, store.names, batch_size=5)
        first = worker.run(0, 2)
        written = {str(r.id): r.vector["image_oti"] for r in store.collection.retrieve(foreign.ids, with_vectors=True)
                   if "image_oti" in r.vector}
        assert len(written) == first.written > 0
        rest = backfill(store.collection, store.encoder, store.names, batch_size=5, progress=False)
        assert rest.written == 12 - first.written
        again = {str(r.id): r.vector["image_oti"] for r in store.collection.retrieve(foreign.ids, with_vectors=True)}
        assert all(again[k] == v for k, v in written.items()) and len(again) == 12


@pytest.mark.parametrize("engine,vector", [("local", ""), ("edge", "clip")])
def test_cli_adopt_backfill_search_every_mode(tmp_path, demo, capsys, engine, vector):
    foreign = make_foreign(tmp_path, demo, engine, vector, "int", n=6)
    loc = ["--location", foreign.location, "--collection", NAME, *foreign.engine_flag]
    model = ["--model", "crossgap-demo", "--quiet"]
    code, out, err = cli(capsys, "adopt", *loc, *model, "--vector", vector, "--json")
    assert code == EXIT_OK, err
    assert json.loads(out)["adopted"]["check"]["points"] == 6
    code, out, err = cli(capsys, "backfill", *loc, *model, "--steps", STEPS, "--workers", 2, "--json")
    assert code == EXIT_OK, err
    report = json.loads(out)
    assert report["written"] == 6 and report["missing"] == 0
    code, out, err = cli(capsys, "backfill", *loc, *model, "--steps", STEPS, "--json")
    assert code == EXIT_OK and json.loads(out)["written"] == 0  # nothing left: a rerun writes nothing
    for mode in MODES:
        code, out, err = cli(capsys, "search", foreign.ids[0], *loc, *model, "--steps", STEPS, "--mode", mode,
                             "--limit", 3, "--json")
        assert code == EXIT_OK, (mode, err)
        hits = json.loads(out)["hits"]
        assert len(hits) == 3 and all(h["payload"]["label"].startswith("class") for h in hits), mode
    code, out, err = cli(capsys, "search", "a photo", "--text", *loc, *model, "--limit", 2, "--json")
    assert code == EXIT_OK and len(json.loads(out)["hits"]) == 2
    code, out, err = cli(capsys, "optimize", *loc, "--json")
    assert code == EXIT_OK, err
    if engine == "edge":
        assert json.loads(out)["indexed_vectors"] is not None
    code, out, err = cli(capsys, "info", *loc)
    assert code == EXIT_OK and "model checked on 6 point(s)" in out


def test_cli_adopt_errors(tmp_path, demo, capsys):
    foreign = make_foreign(tmp_path, demo, "local", "", "int", n=2)
    loc = ["--location", foreign.location, "--collection", NAME, "--engine", "local"]
    code, _, err = cli(capsys, "adopt", *loc, "--model", "crossgap-demo", "--vector", "clip")
    assert code == EXIT_ERROR and "no vector 'clip'" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(capsys, "search", "101", *loc, "--model", "crossgap-demo")
    assert code == EXIT_ERROR and "crossgap-qdrant adopt" in err
    code, _, err = cli(capsys, "backfill", *loc, "--model", "crossgap-demo", "--workers", 0)
    assert code == 2 and "--workers" in err


@pytest.mark.parametrize("engine,vector", [("edge", ""), ("local", "clip")])
def test_transforms_and_hubness_from_stored_vectors(tmp_path, demo, engine, vector):
    """IsoCLIP and PCA from stored vectors equal the same maps computed from the images; hubness statistics
    fitted on the stored vectors; all searchable, and rebuilt from the record when reopened."""
    foreign = make_foreign(tmp_path, demo, engine, vector, "int", n=8)
    before = snapshot(foreign)
    iso = IsoCLIPProjector.from_model(demo.model, 10, 5).vector("image")
    pca = fit_pca_projector(demo.model, demo.tokenizer).vector("image")
    with adopt(foreign, demo) as store:
        backfill(store.collection, store.encoder, store.names, batch_size=4, progress=False)
        assert add_stored_transform(store, "image_isoclip", iso) == 8
        assert add_stored_transform(store, "image_pca", pca) == 8
        assert add_stored_transform(store, "image_pca", pca) == 0  # resumable: nothing left to write
        pixels = load_pixels(demo.preprocess, foreign.paths)
        for name, vec in (("image_isoclip", iso), ("image_pca", pca)):
            reference = vec.compute(demo.model, pixels)
            stored = store.collection.retrieve(foreign.ids, with_vectors=[name])
            by_id = {r.id: torch.tensor(r.vector[name]) for r in stored}
            got = torch.stack([by_id[i] for i in foreign.ids])
            assert float((got * reference).sum(-1).min()) > 0.9999, name
        fitted = store.fit_hubness("image", "gallery_inverted", bank_size=8)
        assert fitted["points"] == 8
        hits = store.search_images(image=foreign.ids[0], mode="gallery_inverted", hubness=True, limit=3)
        assert len(hits) == 3
    with CrossModalStore.open(foreign.location, NAME, demo, create=False,
                              engine="local" if engine == "local" else None) as store:
        for mode in ("image_isoclip", "image_pca"):
            hits = store.search_images(image=foreign.ids[1], mode=mode, limit=3)
            assert len(hits) == 3 and all("label" in h.payload for h in hits), mode

        shift = ModalityGapShift(torch.zeros(128), torch.ones(128) / 128 ** 0.5)
        with pytest.raises(NotFromStoredVectorsError, match="not linear in the normalised vector"):
            add_stored_transform(store, "image_gap", shift.vector("image"))
    after, before = snapshot(foreign)["points"], before["points"]
    # in place, the fitted hub values are one payload key more (merged); with a companion they stay there
    hub_keys = {"hub_image_gallery_inverted"} if vector else set()
    assert after.keys() == before.keys()
    for pid, (native, payload) in after.items():
        assert native == before[pid][0] and set(payload) - set(before[pid][1]) == hub_keys
        assert {k: v for k, v in payload.items() if k not in hub_keys} == before[pid][1]


def test_cli_transforms(tmp_path, demo, capsys):
    foreign = make_foreign(tmp_path, demo, "edge", "", "int", n=5)
    loc = ["--location", foreign.location, "--collection", NAME]
    model = ["--model", "crossgap-demo", "--quiet"]
    assert cli(capsys, "adopt", *loc, *model, "--vector", "")[0] == EXIT_OK
    code, out, err = cli(capsys, "backfill", *loc, *model, "--steps", STEPS, "--transform", "isoclip:10,5",
                         "--transform", "pca", "--json")
    assert code == EXIT_OK, err
    assert json.loads(out)["transforms"] == {"image_isoclip": 5, "image_pca": 5}
    code, out, err = cli(capsys, "search", foreign.ids[0], *loc, *model, "--mode", "image_isoclip", "--limit", 2,
                         "--json")
    assert code == EXIT_OK and len(json.loads(out)["hits"]) == 2, err
    code, _, err = cli(capsys, "backfill", *loc, *model, "--transform", "gap_shift")
    assert code == 2 and "not linear in the normalised vector" in err


def test_cli_evaluate_label_field(tmp_path, demo, capsys):
    foreign = make_foreign(tmp_path, demo, "local", "", "int", n=6)
    loc = ["--location", foreign.location, "--collection", NAME, "--engine", "local"]
    assert cli(capsys, "adopt", *loc, "--model", "crossgap-demo", "--quiet", "--vector", "")[0] == EXIT_OK
    code, out, err = cli(capsys, "evaluate", "--label-field", "label", *loc, "--model", "crossgap-demo", "--quiet",
                         "--steps", STEPS, "--methods", "native,gallery_inverted", "--backend", "torch",
                         "--bootstrap", 10, "--json")
    assert code == EXIT_OK, err
    result = json.loads(out)
    assert result["num_gallery"] == 6 and {r["method"] for r in result["results"]} >= {"native", "gallery_inverted"}
    code, _, err = cli(capsys, "evaluate", "--label-field", "nothing", *loc, "--model", "crossgap-demo", "--quiet")
    assert code == EXIT_ERROR and "0 point(s) with a 'nothing' payload field" in err


def test_ray_backfill_without_ray_names_the_extra(monkeypatch):
    """Without Ray installed, the Ray backfill says which extra brings it (a package error, one CLI line)."""
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'crossgap-qdrant\[ray\]'"):
        backfill_on_ray(None, None, VectorNames(), workers=1)
