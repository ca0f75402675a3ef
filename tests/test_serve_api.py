"""The web service in-process (FastAPI's TestClient) over a small store built with the demo model."""

import io
import json
import threading
import time
from importlib import resources
from types import SimpleNamespace

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from crossgap_qdrant.models import load_model
from crossgap_qdrant.serve import create_app  # noqa: E402
from crossgap_qdrant.serve.service import ServiceLimits  # noqa: E402
from crossgap_qdrant.store import CrossModalStore
from tests.support.serve import TEXTS, build_store, shape_images  # noqa: E402


@pytest.fixture(scope="module")
def demo_clip():
    return load_model("crossgap-demo", device="cpu")


@pytest.fixture(scope="module")
def served(demo_clip, tmp_path_factory):
    """.store, .client, .images (stored paths) and .gone (a stored image whose file was deleted afterwards)."""
    root = tmp_path_factory.mktemp("serve")
    images = shape_images(root / "imgs")
    gone = root / "gone.png"
    Image.new("RGB", (40, 40), "purple").save(gone)
    store = build_store(root / "q", demo_clip, images + [gone])
    gone.unlink()
    app = create_app(store, limits=ServiceLimits(max_upload_bytes=200_000, max_pixels=1_000_000, max_limit=50))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield SimpleNamespace(store=store, client=client, images=images, gone=gone)
    store.close()


def image_id(client, path) -> str:
    hits = client.get("/api/search", params={"text": "a shape", "limit": 50}).json()["hits"]
    return next(h["id"] for h in hits if h["payload"]["source"] == str(path))


def png_bytes(size=(48, 48), colour="red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_error(response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and "Traceback" not in body["error"] and "\n" not in body["error"]
    for word in words:
        assert word in body["error"], body
    return body


def test_info_names_the_collection_counts_and_modes(served):
    client = served.client
    images = served.images
    info = client.get("/api/info").json()
    assert info["collection"] == "serve" and info["model"].startswith("crossgap-demo")
    assert info["counts"] == {"images": len(images) + 1, "texts": len(TEXTS)} and info["points"] == len(images) + 5
    assert info["modes"]["images"][:4] == ["native", "gallery_inverted", "query_inverted", "fused"]
    assert info["compare_modes"] == {"images": "gallery_inverted", "texts": "gallery_inverted"}
    assert info["limits"] == {"max_upload_bytes": 200_000, "max_pixels": 1_000_000, "max_limit": 50}


def test_text_search_answers_hits_with_thumbnails_and_the_mode(served):
    store = served.store
    client = served.client
    answer = client.get("/api/search", params={"text": "a red circle", "limit": 3}).json()
    assert answer["mode"] == "native" and answer["score_kind"] == "cosine" and answer["gallery"] == "images"
    assert answer["query_kind"] == "text" and answer["query_excluded"] is False and answer["hubness"] is False
    hits = answer["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and all(h["modality"] == "image" for h in hits)
    assert all(h["thumbnail"] == f"/thumb/{h['id']}" for h in hits)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    # the same search through the store itself: the service adds nothing and drops nothing
    direct = store.search_images(text="a red circle", limit=3)
    assert [h["id"] for h in hits] == [str(p.id) for p in direct]


def test_thumbnail_is_a_small_jpeg_of_the_stored_file_with_cache_headers(served):
    client = served.client
    images = served.images
    pid = image_id(client, images[0])
    response = client.get(f"/thumb/{pid}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert "max-age" in response.headers["cache-control"]
    thumb = Image.open(io.BytesIO(response.content))
    assert thumb.format == "JPEG" and max(thumb.size) <= 192
    red = thumb.convert("RGB").getpixel((thumb.size[0] // 2, thumb.size[1] // 2))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60  # the red ellipse's centre
    again = client.get(f"/thumb/{pid}", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and not again.content


def test_id_search_runs_each_mode_and_leaves_the_query_out(served):
    client = served.client
    images = served.images
    pid = image_id(client, images[0])
    for mode, kind in (("native", "cosine"), ("gallery_inverted", "cosine"), ("fused", "rrf")):
        answer = client.get("/api/search", params={"id": pid, "mode": mode, "limit": 4}).json()
        assert answer["mode"] == mode and answer["score_kind"] == kind and answer["query_excluded"] is True
        assert len(answer["hits"]) == 4 and pid not in [h["id"] for h in answer["hits"]]
    default = client.get("/api/search", params={"id": pid}).json()
    assert default["mode"] == "gallery_inverted"  # the collection's default for image->image


def test_uploaded_image_equals_the_id_search_of_the_stored_file(served):
    client = served.client
    images = served.images
    pid = image_id(client, images[2])
    data = images[2].read_bytes()
    for mode in ("native", "gallery_inverted"):
        upload = client.post("/api/search", params={"mode": mode, "limit": 5},
                             files={"image": ("query.png", data, "image/png")})
        assert upload.status_code == 200, upload.text
        by_id = client.get("/api/search", params={"id": pid, "mode": mode, "limit": 5}).json()
        answer = upload.json()
        assert answer["query_kind"] == "image" and answer["query"] == "query.png" and answer["query_excluded"] is True
        assert [h["id"] for h in answer["hits"]] == [h["id"] for h in by_id["hits"]]
        assert pid not in [h["id"] for h in answer["hits"]]
    other = client.post("/api/search", files={"image": ("new.png", png_bytes(colour="navy"), "image/png")}).json()
    assert other["query_excluded"] is False and len(other["hits"]) == 8  # not stored: nothing to leave out


def test_text_gallery_and_hits_without_thumbnails(served):
    client = served.client
    images = served.images
    answer = client.get("/api/search", params={"text": TEXTS[1], "gallery": "texts"}).json()
    assert answer["gallery"] == "texts" and answer["mode"] == "gallery_inverted" and answer["query_excluded"] is True
    assert len(answer["hits"]) == len(TEXTS) - 1 and all(h["thumbnail"] is None for h in answer["hits"])
    assert TEXTS[1] not in [h["payload"]["text"] for h in answer["hits"]]
    cross = client.post("/api/search", params={"gallery": "texts", "limit": 2},
                        files={"image": ("q.png", images[0].read_bytes(), "image/png")}).json()
    assert cross["mode"] == "native" and cross["query_modality"] == "image" and len(cross["hits"]) == 2


def test_payload_filters_in_both_forms(served):
    client = served.client
    images = served.images
    one = str(images[3])
    answer = client.get("/api/search", params={"text": "a shape", "filter": f"source:{one}"}).json()
    assert [h["payload"]["source"] for h in answer["hits"]] == [one]
    two = json.dumps({"source": [str(images[0]), str(images[1])], "modality": "image"})
    answer = client.get("/api/search", params={"text": "a shape", "filter": two}).json()
    assert sorted(h["payload"]["source"] for h in answer["hits"]) == sorted(map(str, images[:2]))
    both = client.get("/api/search", params=[("text", "x"), ("filter", f"source:{one}"), ("filter", "modality:text")])
    assert both.json()["hits"] == []  # repeated filters must all hold
    for bad, words in (("label", "KEY:VALUE"), ("{not json", "not valid JSON"), ('{"a": true}', "string or an integer"),
                       ('{"a": [1, "x"]}', "only strings or only integers"), ("[1]", "KEY:VALUE")):
        assert_error(client.get("/api/search", params={"text": "x", "filter": bad}), 400, words)


@pytest.mark.parametrize("params, status, words", [
    ({"id": "123456"}, 404, ("point 123456 is not in collection",)),
    ({"id": "00000000-0000-4000-8000-000000000000"}, 404, ("is not in collection",)),
    ({"id": "../../etc/passwd"}, 400, ("is not a point id",)),
    ({"text": "x", "mode": "fused"}, 400, ("text->image search compares native CLIP vectors",)),
    ({"text": "x", "gallery": "texts", "mode": "bogus"}, 400, ("mode must be one of native, gallery_inverted",)),
    ({"text": "x", "gallery": "videos"}, 400, ("gallery must be images or texts",)),
    ({"text": "x", "limit": 0}, 400, ("limit must be between 1 and 50",)),
    ({"text": "x", "limit": 51}, 400, ("limit must be between 1 and 50",)),
    ({"text": "x", "limit": "ten"}, 400, ("limit", "integer")),
    ({"text": "x", "hubness": "maybe"}, 400, ("hubness",)),
    ({"text": "   "}, 400, ("text query is empty",)),
    ({"text": "x", "id": "1"}, 400, ("give text=... or id=...",)),
    ({}, 400, ("give text=... or id=...",)),
])
def test_search_errors_are_4xx_json(served, params, status, words):
    client = served.client
    assert_error(client.get("/api/search", params=params), status, *words)


def test_image_mode_errors_name_the_modes(served):
    client = served.client
    images = served.images
    pid = image_id(client, images[0])
    assert_error(client.get("/api/search", params={"id": pid, "mode": "bogus"}), 400,
                 "mode must be one of native, gallery_inverted, query_inverted, fused, got 'bogus'")


def test_upload_errors_are_4xx_json(served):
    client = served.client

    def post(data, name="q.png", field="image", **kwargs):
        return client.post("/api/search", files={field: (name, data, "image/png")}, **kwargs)

    assert_error(post(b"x" * 300_000, "big.png"), 413, "larger than the service's limit of 200000 bytes")
    chunks = (b"x" * 50_000 for _ in range(8))  # no Content-Length: refused while it arrives
    chunked = client.post("/api/search", content=chunks,
                          headers={"content-type": "multipart/form-data; boundary=zzz"})
    assert_error(chunked, 413, "larger than the service's limit")
    assert_error(post(b"%PDF-1.4 not an image", "doc.pdf"), 400, "doc.pdf: not an image file PIL can read")
    assert_error(post(png_bytes(size=(2000, 1000)), "wide.png"), 400, "2000x1000 = 2000000 pixels exceeds the limit")
    assert_error(post(b"", "empty.png"), 400, "empty")
    assert_error(post(png_bytes(), field="file"), 400, "field named 'image'")
    assert_error(client.post("/api/search", data={"image": "not a file"}), 400, "field named 'image'")
    assert_error(client.post("/api/search", content=b"--zzz\r\nbroken",
                             headers={"content-type": "multipart/form-data; boundary=zzz"}), 400, "multipart")
    assert_error(client.post("/api/search", content=b"garbage",
                             headers={"content-type": "multipart/form-data; boundary=zzz"}), 400,
                 "not a readable multipart form")
    assert_error(client.post("/api/search", files=[("image", ("a.png", png_bytes(), "image/png")),
                                                   ("image", ("b.png", png_bytes(), "image/png"))]), 400,
                 "not a readable multipart form")
    assert_error(post(png_bytes(), params={"mode": "bogus"}), 400, "mode must be one of")


@pytest.mark.parametrize("path, status", [
    ("/thumb/..%2F..%2Fetc%2Fpasswd", 404),
    ("/thumb/../../etc/passwd", 404),
    ("/thumb/%2Fetc%2Fpasswd", 404),
    ("/thumb/etc", 400),
    ("/thumb/123456", 404),
    ("/static/../app.py", 404),
    ("/static/%2e%2e/app.py", 404),
    ("/api/nothing", 404),
])
def test_thumbnails_only_for_stored_points(served, path, status):
    client = served.client
    assert_error(client.get(path), status)


def test_thumbnail_of_a_text_or_a_vanished_file_is_404(served):
    client = served.client
    gone = served.gone
    text_hit = client.get("/api/search", params={"text": TEXTS[0], "gallery": "texts", "limit": 1}).json()["hits"][0]
    assert_error(client.get(f"/thumb/{text_hit['id']}"), 404, "not an image with a stored source file")
    assert_error(client.get(f"/thumb/{image_id(client, gone)}"), 404, "source file cannot be read any more")


def test_unexpected_failures_are_500_without_details(served, monkeypatch):
    store = served.store
    client = served.client

    def broken(*args, **kwargs):
        raise RuntimeError("secret detail in /var/lib/secret")

    monkeypatch.setattr(store, "search_images", broken)
    body = assert_error(client.get("/api/search", params={"text": "x"}), 500, "internal error (RuntimeError)")
    assert "secret" not in body["error"]


def test_store_use_is_serialised(served, monkeypatch):
    """Requests run in parallel threads; the store is entered by one at a time."""
    store = served.store
    client = served.client
    active, peak, guard = [0], [0], threading.Lock()
    query = store.collection.query

    def watched(requests):
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)  # widen the window in which a second thread would enter
        try:
            return query(requests)
        finally:
            with guard:
                active[0] -= 1

    monkeypatch.setattr(store.collection, "query", watched)
    answers = []

    def one(i):
        answers.append(client.get("/api/search", params={"text": f"shape {i}", "limit": 2}).status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [200] * 6 and peak[0] == 1


def test_page_and_assets_are_local(served):
    client = served.client
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'id="search-form"' in page.text and '/static/app.js' in page.text
    static = resources.files("crossgap_qdrant.serve") / "static"
    for name in ("index.html", "app.js", "app.css"):
        text = (static / name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
        assert client.get(f"/static/{name}").status_code == 200


def test_hubness_corrected_search_names_its_score(demo_clip, tmp_path):
    images = shape_images(tmp_path / "imgs")
    store = build_store(tmp_path / "q", demo_clip, images)
    try:
        store.fit_hubness("image", "native")
        client = TestClient(create_app(store))
        pid = image_id(client, images[0])
        plain = client.get("/api/search", params={"id": pid, "mode": "native"}).json()
        corrected = client.get("/api/search", params={"id": pid, "mode": "native", "hubness": "true"}).json()
        assert plain["hubness"] is False and plain["score_kind"] == "cosine"
        assert corrected["hubness"] is True and corrected["score_kind"] == "cosine - hubness"
        direct = store.search_images(image=pid, mode="native", hubness=True)
        assert [h["score"] for h in corrected["hits"]] == pytest.approx([p.score for p in direct])
        assert_error(client.get("/api/search", params={"text": "x", "hubness": "true"}), 400,
                     "hubness correction applies to image->image search, not text->image")
    finally:
        store.close()


def test_missing_inverted_vectors_are_409_for_every_query_form(demo_clip, tmp_path):
    images = shape_images(tmp_path / "imgs")
    store = CrossModalStore.open(str(tmp_path / "q"), "plain", demo_clip)
    try:
        store.ingest_images([str(p) for p in images], invert=False, progress=False)
        client = TestClient(create_app(store))
        pid = image_id(client, images[0])
        upload = client.post("/api/search", params={"mode": "gallery_inverted"},
                             files={"image": ("q.png", images[0].read_bytes(), "image/png")})
        for response in (upload, client.get("/api/search", params={"id": pid, "mode": "gallery_inverted"})):
            assert_error(response, 409, "image_oti", "invert")
        assert client.get("/api/search", params={"id": pid, "mode": "native"}).status_code == 200
    finally:
        store.close()
