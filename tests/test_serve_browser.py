"""The search page and a contact sheet in a real headless Chromium (Debian's chromium and chromium-driver).

Set CROSSGAP_SCREENSHOT=docs/serve.png (and CROSSGAP_SHEET_SCREENSHOT=docs/contact_sheet.png) to keep
screenshots of what the browser showed.
"""

import os
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} missing (Debian package chromium)"),
    pytest.mark.skipif(not CHROMEDRIVER.is_file(), reason=f"{CHROMEDRIVER} missing (Debian package chromium-driver)"),
]
selenium = pytest.importorskip("selenium", reason="selenium (the test extra) is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extra (fastapi, uvicorn) is not installed")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from crossgap_qdrant.models import load_model  # noqa: E402
from crossgap_qdrant.serve import create_app  # noqa: E402
from crossgap_qdrant.serve.contact_sheet import query_thumbnail, render_contact_sheet  # noqa: E402
from crossgap_qdrant.serve.results import run_search  # noqa: E402
from tests.support.serve import build_store, openclipart_images, shape_images  # noqa: E402

#: A query the demo model answers with pictures of its kind among the held-out openclipart categories.
QUERY = "food"
WAIT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    return root, (openclipart_images(per_category=6) or shape_images(root / "imgs"))


@pytest.fixture(scope="module")
def store(gallery):
    root, images = gallery
    # a screenshot shows what a user sees: image inversions with the published budget (about 12 s more)
    store = build_store(root / "q", load_model("crossgap-demo", device="cpu"), images,
                        exact_images=bool(os.environ.get("CROSSGAP_SCREENSHOT")))
    yield store
    store.close()


@pytest.fixture(scope="module")
def server(store):
    """The service on 127.0.0.1 (a free port) in a thread; yields its address."""
    port = free_port()
    config = uvicorn.Config(create_app(store), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the service did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=WAIT_S)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium look for drivers on the network
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1100",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    yield driver
    driver.quit()


def shown_images(driver, selector: str) -> list:
    """The images under ``selector`` once every one has loaded (decoded, non-zero width)."""
    images = driver.find_elements(By.CSS_SELECTOR, selector)
    loaded = driver.execute_script("return arguments[0].every(i => i.complete && i.naturalWidth > 0)", images)
    return images if images and loaded else []


def column_ids(driver) -> dict[str, list[str]]:
    return driver.execute_script("""
        const out = {};
        for (const c of document.querySelectorAll('#columns .column'))
            out[c.dataset.mode] = [...c.querySelectorAll('button.hit img')].map(i => i.getAttribute('src'));
        return out;""")


def screenshot(driver, variable: str) -> None:
    target = os.environ.get(variable)
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(target)


def test_type_a_query_see_thumbnails_click_one_see_new_results(server, browser, gallery):
    shown = min(12, len(gallery[1]))  # the page asks for 12 results a column
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(server + "/")
    wait.until(lambda d: "collection serve" in d.find_element(By.ID, "collection").text)
    box = browser.find_element(By.ID, "text")
    box.send_keys(QUERY, Keys.ENTER)  # Enter submits the form
    first = wait.until(lambda d: shown_images(d, "#columns button.hit img"))
    assert len(first) == shown and set(column_ids(browser)) == {"native"}  # text->image: CLIP's own search
    assert f"{shown} results" in browser.find_element(By.ID, "status").text

    clicked = browser.find_elements(By.CSS_SELECTOR, "#columns button.hit")[1]
    clicked_thumb = clicked.find_element(By.TAG_NAME, "img").get_attribute("src")
    clicked.click()  # search by that image: native beside the inter-modal mode
    wait.until(lambda d: set(column_ids(d)) == {"native", "gallery_inverted"}
               and shown_images(d, "#columns button.hit img") and shown_images(d, "#query-thumb"))
    columns = column_ids(browser)
    assert all(len(srcs) == min(12, len(gallery[1]) - 1) for srcs in columns.values())  # all but the query
    assert browser.find_element(By.ID, "query-thumb").get_attribute("src") == clicked_thumb
    assert all(clicked_thumb not in srcs for srcs in columns.values())  # the query is left out of its results
    assert "left out" in browser.find_element(By.ID, "query-text").text
    assert box.get_attribute("value") == ""  # the form shows no stale text query
    ActionChains(browser).move_to_element(browser.find_element(By.TAG_NAME, "h1")).perform()  # no hover outline
    screenshot(browser, "CROSSGAP_SCREENSHOT")

    # keyboard only: focus a result of the inter-modal column and press Enter
    target = browser.find_elements(By.CSS_SELECTOR, '#columns .column[data-mode="gallery_inverted"] button.hit')[0]
    target_thumb = target.find_element(By.TAG_NAME, "img").get_attribute("src")
    browser.execute_script("arguments[0].focus()", target)
    assert browser.switch_to.active_element == target
    target.send_keys(Keys.ENTER)
    wait.until(lambda d: d.find_element(By.ID, "query-thumb").get_attribute("src") == target_thumb
               and shown_images(d, "#columns button.hit img"))
    assert all(target_thumb not in srcs for srcs in column_ids(browser).values())
    assert browser.switch_to.active_element.get_attribute("id") == "query-title"  # Tab continues into the results


def test_upload_an_image_file(server, browser, gallery):
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(server + "/")
    wait.until(lambda d: "collection serve" in d.find_element(By.ID, "collection").text)
    browser.find_element(By.ID, "image").send_keys(str(gallery[1][0]))
    wait.until(lambda d: set(column_ids(d)) == {"native", "gallery_inverted"}
               and shown_images(d, "#columns button.hit img") and shown_images(d, "#query-thumb"))
    assert "left out" in browser.find_element(By.ID, "query-text").text  # the file is stored: excluded


def test_errors_show_on_the_page(server, browser):
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(server + "/")
    wait.until(lambda d: "collection serve" in d.find_element(By.ID, "collection").text)
    browser.find_element(By.ID, "submit").click()  # nothing typed, nothing chosen
    status = browser.find_element(By.ID, "status")
    assert "Type a text or choose an image" in status.text and "error" in status.get_attribute("class")


def test_contact_sheet_renders_its_embedded_thumbnails(store, browser, tmp_path):

    hits = run_search(store, text=QUERY, limit=1).hits
    modes = ("gallery_inverted", "native", "fused")
    results = [run_search(store, point_id=hits[0].id, mode=m, limit=8) for m in modes]
    sheet = tmp_path / "sheet.html"
    sheet.write_text(render_contact_sheet(results, collection="serve", query_thumbnail=query_thumbnail(results[0])))
    browser.get(sheet.as_uri())
    images = WebDriverWait(browser, WAIT_S).until(lambda d: shown_images(d, "img.hit"))
    assert len(images) == 3 * min(8, store.count("image") - 1) and shown_images(browser, "img.query")
    screenshot(browser, "CROSSGAP_SHEET_SCREENSHOT")
