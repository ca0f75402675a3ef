"""``search``'s header line, ``--compare`` columns and ``--html`` contact sheets (crossgap_qdrant.cli.search_output,
crossgap_qdrant.serve.contact_sheet)."""

import base64
import io
import json
import re

import pytest
from PIL import Image

from crossgap_qdrant.cli import EXIT_OK, EXIT_USAGE, main
from crossgap_qdrant.serve.contact_sheet import render_contact_sheet
from crossgap_qdrant.serve.results import Hit, SearchResult, header_line
from tests.support.serve import TEXTS, shape_images

MODEL = ["--model", "test-tiny-clip", "--pretrained", "none", "--steps", "2", "--quiet"]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """A folder collection of the generated shapes and texts, ingested once by the command line."""
    root = tmp_path_factory.mktemp("sheet")
    images = shape_images(root / "imgs")
    texts = root / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    loc = ["--location", str(root / "q"), "--collection", "sheet"]
    assert main(["ingest", str(root / "imgs"), *MODEL, *loc]) == EXIT_OK
    assert main(["ingest", str(texts), "--texts", *MODEL, *loc]) == EXIT_OK
    return root, images, loc


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def img_sources(page: str, css_class: str | None = None) -> list[str]:
    tags = re.findall(r"<img\b[^>]*>", page)
    if css_class is not None:
        tags = [t for t in tags if f'class="{css_class}"' in t]
    return [re.search(r'src="([^"]*)"', t).group(1) for t in tags]


def test_html_of_a_text_query_has_one_embedded_thumbnail_per_hit(capsys, collection, tmp_path):
    _, _, loc = collection
    sheet = tmp_path / "sheet.html"
    code, _, err = run(capsys, "search", "a red circle", "--text", *MODEL, *loc, "--limit", "4", "--html", sheet)
    assert code == EXIT_OK, err
    page = sheet.read_text()
    sources = img_sources(page)
    assert len(sources) == 4  # the hits, nothing else
    for src in sources:  # real JPEGs inside the page: nothing to fetch
        assert src.startswith("data:image/jpeg;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert "<dd>native (cosine)</dd>" in page and "a red circle" in page and "<dd>images</dd>" in page
    assert "http" not in page.replace("http-equiv", "")  # no network address anywhere
    assert str(sheet) in err


def test_html_of_an_image_query_shows_the_query_and_the_compared_modes(capsys, collection, tmp_path):
    _, images, loc = collection
    sheet = tmp_path / "sheet.html"
    code, _, err = run(capsys, "search", images[0], *MODEL, *loc, "--limit", "3", "--mode", "gallery_inverted",
                         "--compare", "native,fused", "--html", sheet)
    assert code == EXIT_OK, err
    page = sheet.read_text()
    assert len(img_sources(page, "hit")) == 9 and len(img_sources(page, "query")) == 1
    assert len(img_sources(page)) == 10
    for mode, kind in (("gallery_inverted", "cosine"), ("native", "cosine"), ("fused", "rrf")):
        assert f"<h2>{mode} <span>{kind}, 3 hits</span></h2>" in page
    assert "<dt>query excluded</dt><dd>yes</dd>" in page
    assert images[0].name not in page.split("<ol>", 1)[1]  # the query is not among its own results


def test_header_line_names_query_mode_gallery_hubness_and_exclusion(capsys, collection):
    _, images, loc = collection
    code, out, err = run(capsys, "search", images[0], *MODEL, *loc, "--limit", "2", "--mode", "fused")
    assert code == EXIT_OK, err
    lines = out.splitlines()
    assert lines[0] == (f"query: {str(images[0])!r} (image) | gallery: images | mode: fused (rrf) | "
                        "hubness: off | query excluded")
    assert lines[1].split() == ["rank", "rrf", "id", "item"] and len(lines) == 6  # and a line naming the score
    code, out, err = run(capsys, "search", "a blue square", "--text", *MODEL, *loc, "--limit", "2")
    assert code == EXIT_OK, err
    assert out.splitlines()[0] == ("query: 'a blue square' (text) | gallery: images | mode: native (cosine) | "
                                   "hubness: off")
    # a stored text searched among the texts is left out of its own results
    code, out, err = run(capsys, "search", "a blue square", "--text", "--gallery", "texts", *MODEL, *loc, "--json")
    result = json.loads(out)
    assert code == EXIT_OK and result["query_excluded"] is True
    assert len(result["hits"]) == len(TEXTS) - 1
    assert "a blue square" not in [h["payload"]["text"] for h in result["hits"]]


def test_compare_prints_modes_side_by_side_and_json_columns(capsys, collection):
    _, images, loc = collection
    code, out, err = run(capsys, "search", images[1], *MODEL, *loc, "--limit", "3", "--mode", "native",
                         "--compare", "gallery_inverted")
    assert code == EXIT_OK, err
    lines = out.splitlines()
    assert "modes: native (cosine), gallery_inverted (cosine)" in lines[0]
    assert lines[1].split() == ["rank", "cosine", "native", "cosine", "gallery_inverted"]
    assert len(lines) == 2 + 1 + 3 and all(len(line.split()) == 5 for line in lines[3:])
    code, out, err = run(capsys, "search", images[1], *MODEL, *loc, "--limit", "3", "--mode", "native",
                         "--compare", "gallery_inverted", "--json")
    data = json.loads(out)
    assert [c["mode"] for c in data["columns"]] == ["native", "gallery_inverted"]
    assert all(len(c["hits"]) == 3 for c in data["columns"]) and data["hits"] == data["columns"][0]["hits"]


def test_compare_and_html_refusals_are_usage_errors(capsys, collection, tmp_path):
    _, images, loc = collection
    code, _, err = run(capsys, "search", "a red circle", "--text", *MODEL, *loc, "--compare", "fused")
    assert code == EXIT_USAGE and "does not apply to text->image" in err
    code, _, err = run(capsys, "search", images[0], *MODEL, *loc, "--compare", "native,,fused")
    assert code == EXIT_USAGE and "--compare takes mode names" in err
    code, _, err = run(capsys, "search", images[0], *MODEL, *loc, "--html", tmp_path / "missing" / "s.html")
    assert code == EXIT_USAGE and "does not exist" in err
    code, _, err = run(capsys, "search", images[0], *MODEL, *loc, "--html", tmp_path)
    assert code == EXIT_USAGE and "is a folder" in err


def test_contact_sheet_escapes_payload_text():
    hits = [Hit(1, "1", 0.5, {"modality": "text", "text": "<script>alert(1)</script>"})]
    result = SearchResult("<b>q</b>", "text", "text", "texts", "native", False, "cosine", False, hits)
    page = render_contact_sheet([result], collection="<c>")
    assert "<script>alert" not in page and "&lt;script&gt;" in page and "<b>q</b>" not in page
    assert "<img" not in page  # texts have no thumbnail
    assert header_line([result]).startswith("query: '<b>q</b>' (text) | gallery: texts")


def test_html_of_a_stored_id_shows_the_stored_image_as_the_query(capsys, collection, tmp_path):
    _, images, loc = collection
    code, out, _ = run(capsys, "search", images[0], *MODEL, *loc, "--limit", "1", "--mode", "native", "--json")
    pid = json.loads(out)["hits"][0]["id"]
    stored = json.loads(out)["hits"][0]["payload"]["source"]
    sheet = tmp_path / "sheet.html"
    code, out, err = run(capsys, "search", pid, *MODEL, *loc, "--limit", "2", "--html", sheet)
    assert code == EXIT_OK, err
    assert out.splitlines()[0].startswith(f"query: '{pid}' (stored image: {stored}) | gallery: images")
    page = sheet.read_text()
    assert len(img_sources(page, "query")) == 1 and len(img_sources(page, "hit")) == 2
