"""The search page in headless Chromium (selenium with the system chromedriver) against the real service over the
fakes of tests/test_search_service.py: a typed query shows ranked result images with captions, scores and score
labels ("cosine", "TF-IDF"); tiny images are drawn pixelated; an image search re-runs when the target or k change
and when the same file is chosen again; changing the mode re-runs a text query; unknown query words and the
service's start-up warnings are shown; example queries and "more like this" (click or Enter on a result's image)
search; captions, warnings and examples are shown as text, never as HTML; the browser logs no CSP violation or
script error. A screenshot goes to $XMODAL_TEST_ARTIFACTS (else the test's tmp_path). Skipped when selenium,
chromium or chromedriver is missing (Debian: `apt-get install chromium chromium-driver`)."""
from __future__ import annotations

import os
import shutil
import threading
import time
import urllib.parse

import pytest

from tests.test_search_service import COLOURS, HTML_CAPTION, NAMES, FakeEncoders, FakeIndex, captions_of, \
    colour_vector, fake_read_pair_sets, image_id, jpeg_bytes, text_vector, write_fake_export
from xmodal_jax.serving import search_service

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


def _binary(*names):
  return next((path for path in map(shutil.which, names) if path), None)


CHROMIUM = _binary("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMEDRIVER = _binary("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason=(
    f"headless Chromium test needs chromium and chromedriver on PATH (found {CHROMIUM!r}, {CHROMEDRIVER!r}); "
    "Debian: apt-get install chromium chromium-driver"))

HEALTH_WARNING = "the caption database has 2 images, 1 of which is not in this export <b>(check --caption_db)</b>"
SEARCHES = ("/api/search/text", "/api/search/captions", "/api/search/image", "/api/search/similar")


def _serve(root, **app_kwargs):
  """Yields (url, requests): the service over the fake export on a free port; `requests` lists (path, query dict)
  of every search call."""
  export = write_fake_export(root)
  if app_kwargs.get("rerank"):
    app_kwargs["read_pair_sets"] = fake_read_pair_sets
  app = search_service.create_app(FakeIndex(export), FakeEncoders(pairs=bool(app_kwargs.get("rerank"))),
                                  captions=search_service.load_caption_search(export), **app_kwargs)
  requests = []

  @app.middleware("http")
  async def record(request, call_next):
    if request.url.path in SEARCHES:
      requests.append((request.url.path, dict(urllib.parse.parse_qsl(request.url.query))))
    return await call_next(request)

  sock = search_service.open_socket("127.0.0.1", 0)
  server = search_service.uvicorn_server(app, log_level="warning", access_log=False)
  thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
  thread.start()
  deadline = time.monotonic() + 60
  while not server.started and time.monotonic() < deadline:
    time.sleep(0.02)
  assert server.started, "the search server did not start"
  yield search_service.socket_url(sock), requests
  server.should_exit = True
  thread.join(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  yield from _serve(tmp_path_factory.mktemp("page"), warnings=[HEALTH_WARNING])


@pytest.fixture(scope="module")
def reranking_server(tmp_path_factory):
  yield from _serve(tmp_path_factory.mktemp("page_rerank"), rerank=3)


@pytest.fixture(scope="module")
def browser():
  from selenium.webdriver.chrome.service import Service
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
               "--no-first-run", "--disable-extensions", "--disable-background-networking"):
    options.add_argument(flag)
  options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
  driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
  driver.set_page_load_timeout(60)
  yield driver
  driver.quit()


def _open(browser, server):
  """Loads the page and waits for it to show the service's health; afterwards (the generator's end) the browser
  must have logged no CSP violation and no script error."""
  url, requests = server
  browser.get_log("browser")  # drop what earlier tests left
  browser.get(url)
  _wait(browser, lambda d: "model step" in d.find_element(By.ID, "info").text)
  yield browser, requests
  problems = [entry["message"] for entry in browser.get_log("browser")
              if "Content Security Policy" in entry["message"] or "Uncaught" in entry["message"]]
  assert not problems, problems


@pytest.fixture
def page(server, browser):
  yield from _open(browser, server)


@pytest.fixture
def reranking_page(reranking_server, browser):
  yield from _open(browser, reranking_server)


def _wait(driver, condition, timeout=60):
  return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))


def _loaded_images(driver):
  return driver.execute_script(
      "return Array.from(document.querySelectorAll('#results .result img'))"
      ".filter(i => i.complete && i.naturalWidth > 0).length")


def _cards(driver):
  return driver.find_elements(By.CSS_SELECTOR, "#results .result")


def _texts(driver, selector):
  return [node.text for node in driver.find_elements(By.CSS_SELECTOR, selector)]


def _clear_results(driver):
  """Empties the result list and the status, so that a test can wait for the next search's answer."""
  driver.execute_script("document.getElementById('results').replaceChildren();"
                        "document.getElementById('status').textContent = ''")


def _searched(driver, requests, before, path):
  """Waits for the answer of a search made after `before` requests; returns that search's query parameters."""
  _wait(driver, lambda d: len(requests) > before and "results for" in d.find_element(By.ID, "status").text)
  assert [p for p, _ in requests[before:]] == [path], requests[before:]
  return requests[-1][1]


def _choose(driver, path):
  driver.find_element(By.ID, "file-input").send_keys(str(path))


def test_text_query_shows_ranked_labelled_results(page, tmp_path):
  browser, _ = page
  browser.find_element(By.ID, "query").send_keys("a red thing")
  browser.find_element(By.ID, "search-button").click()
  _wait(browser, lambda d: _loaded_images(d) == len(COLOURS))
  cards = _cards(browser)
  first = cards[0]
  assert first.get_attribute("data-image-id") == str(image_id("red"))
  assert _texts(first, ".caption") == captions_of("red")[:2]
  expected = float(text_vector("a red thing") @ colour_vector(NAMES.index("red")))
  assert first.find_element(By.CSS_SELECTOR, ".score").text == f"{expected:.3f}"
  assert _texts(browser, "#results .rank") == [str(i) for i in range(1, len(COLOURS) + 1)]  # shown as #1, #2...
  assert _texts(browser, "#results .score-kind") == ["cosine"] * len(COLOURS)
  assert "results for" in browser.find_element(By.ID, "status").text
  assert browser.find_element(By.ID, "results").get_attribute("aria-busy") is None  # set only while searching
  assert not browser.find_element(By.ID, "query-warning").is_displayed()  # every word known
  # The fake export's images are 64x48: drawn with hard pixel edges.
  assert browser.execute_script(
      "return Array.from(document.querySelectorAll('#results img')).map(i => getComputedStyle(i).imageRendering)"
  ) == ["pixelated"] * len(COLOURS)
  screenshot = os.path.join(os.environ.get("XMODAL_TEST_ARTIFACTS") or str(tmp_path), "search_page.png")
  os.makedirs(os.path.dirname(screenshot), exist_ok=True)
  assert browser.save_screenshot(screenshot)
  with open(screenshot, "rb") as f:
    png = f.read()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, len(png)
  print(f"\nsearch page screenshot: {screenshot} ({len(png)} bytes)")


def test_image_query_reruns_on_target_k_and_the_same_file(page, tmp_path):
  browser, requests = page
  path = tmp_path / "query.png"
  path.write_bytes(jpeg_bytes(COLOURS["red"], (128, 128), "PNG"))
  before = len(requests)
  _choose(browser, path)
  assert _searched(browser, requests, before, "/api/search/image")["target"] == "images"
  _wait(browser, lambda d: _loaded_images(d) == len(COLOURS))
  assert _cards(browser)[0].get_attribute("data-image-id") == str(image_id("red"))
  assert browser.find_element(By.ID, "file-input").get_attribute("value") == ""  # reset: the same file fires again
  preview = browser.find_element(By.ID, "preview")
  assert preview.get_attribute("src").startswith("blob:")
  _wait(browser, lambda d: d.execute_script("return document.getElementById('preview').naturalWidth") == 128)
  assert preview.value_of_css_property("image-rendering") != "pixelated"  # 128 px: not tiny

  before = len(requests)  # the bug: switching the target did not search again
  Select(browser.find_element(By.ID, "target")).select_by_value("captions")
  assert _searched(browser, requests, before, "/api/search/image")["target"] == "captions"
  _wait(browser, lambda d: _loaded_images(d) >= 3)
  texts = _texts(browser, "#results .caption")
  assert set(texts[:3]) == set(captions_of("red"))
  assert HTML_CAPTION in texts  # shown literally...
  assert not browser.find_elements(By.CSS_SELECTOR, "#results b, #results .caption img")  # ...not as HTML

  before = len(requests)  # k changed: the same image again, fewer results (Enter in k: not the text in the box)
  browser.find_element(By.ID, "query").send_keys("blue")
  k = browser.find_element(By.ID, "k")
  k.clear()
  k.send_keys("2", Keys.ENTER)
  assert _searched(browser, requests, before, "/api/search/image") == {"k": "2", "target": "captions"}
  assert len(_cards(browser)) == 2

  _clear_results(browser)  # the bug: choosing the same file again fired nothing
  before = len(requests)
  _choose(browser, path)
  assert _searched(browser, requests, before, "/api/search/image") == {"k": "2", "target": "captions"}
  assert len(_cards(browser)) == 2


def test_mode_change_reruns_a_text_query_with_tfidf_labels(page):
  browser, requests = page
  before = len(requests)
  browser.find_element(By.ID, "query").send_keys("small green thing", Keys.ENTER)
  _searched(browser, requests, before, "/api/search/text")
  before = len(requests)
  Select(browser.find_element(By.ID, "mode")).select_by_value("captions")
  _searched(browser, requests, before, "/api/search/captions")
  assert _cards(browser)[0].get_attribute("data-image-id") == str(image_id("green"))
  labels = _texts(browser, "#results .score-kind")
  assert labels and set(labels) == {"TF-IDF"}
  assert browser.find_element(By.CSS_SELECTOR, "#results .score-kind").get_attribute("title").startswith("word match")


def test_unknown_words_are_flagged(page):
  browser, requests = page
  warning = browser.find_element(By.ID, "query-warning")
  before = len(requests)
  browser.find_element(By.ID, "query").send_keys("xyzzy qwerty foo", Keys.ENTER)
  _searched(browser, requests, before, "/api/search/text")
  assert warning.is_displayed()
  assert warning.text == "3 of 3 words unknown: results are not meaningful"
  assert warning.get_attribute("role") == "alert"
  before = len(requests)
  box = browser.find_element(By.ID, "query")
  box.clear()
  box.send_keys("a red xyzzy", Keys.ENTER)
  _searched(browser, requests, before, "/api/search/text")
  assert warning.is_displayed() and warning.text.startswith("1 of 3 words unknown (xyzzy)"), warning.text
  before = len(requests)
  box.clear()
  box.send_keys("a blue square", Keys.ENTER)
  _searched(browser, requests, before, "/api/search/text")
  assert not warning.is_displayed()


def test_reranked_scores_are_labelled_with_their_shortlist_rank(reranking_page):
  browser, requests = reranking_page
  assert not browser.find_element(By.ID, "warnings").is_displayed()  # no warnings: no banner
  assert "re-ranks the top 3" in browser.find_element(By.ID, "info").text
  before = len(requests)
  browser.find_element(By.ID, "query").send_keys("something blue, then red", Keys.ENTER)
  _searched(browser, requests, before, "/api/search/text")
  first = _cards(browser)[0]
  assert first.get_attribute("data-image-id") == str(image_id("red"))  # the cosine ranked blue first
  assert set(_texts(browser, "#results .score-kind")) == {"re-ranked"}
  assert first.find_element(By.CSS_SELECTOR, ".ann").text.startswith("shortlist #2 by cosine ")


def test_health_warnings_and_example_queries(page):
  browser, requests = page
  banner = browser.find_element(By.ID, "warnings")
  assert banner.is_displayed() and banner.get_attribute("role") == "alert"
  assert _texts(browser, "#warnings li") == [HEALTH_WARNING]  # literally: the <b> is text...
  assert not browser.find_elements(By.CSS_SELECTOR, "#warnings b")  # ...not markup
  examples = browser.find_elements(By.CSS_SELECTOR, "#examples button.example")
  assert examples, "no example queries shown"
  assert not browser.find_elements(By.CSS_SELECTOR, "#examples b, #examples img")
  chosen = examples[0].text
  before = len(requests)
  examples[0].click()
  _searched(browser, requests, before, "/api/search/text")
  assert browser.find_element(By.ID, "query").get_attribute("value") == chosen
  assert f"\u201c{chosen}\u201d" in browser.find_element(By.ID, "status").text


def test_more_like_this_by_click_and_keyboard(page):
  browser, requests = page
  before = len(requests)
  browser.find_element(By.ID, "query").send_keys("blue", Keys.ENTER)
  _searched(browser, requests, before, "/api/search/text")
  _wait(browser, lambda d: _loaded_images(d) == len(COLOURS))
  blue = str(image_id("blue"))
  assert _cards(browser)[0].get_attribute("data-image-id") == blue
  before = len(requests)
  _cards(browser)[0].find_element(By.CSS_SELECTOR, "img").click()
  assert _searched(browser, requests, before, "/api/search/similar") == {
      "image_id": blue, "k": "12", "target": "images"}
  ids = [card.get_attribute("data-image-id") for card in _cards(browser)]
  assert len(ids) == len(COLOURS) - 1 and blue not in ids  # the image itself is left out
  assert "more like image " + blue in browser.find_element(By.ID, "status").text
  assert browser.find_element(By.ID, "preview").get_attribute("src").endswith(f"/images/{blue}.jpg")
  assert _texts(browser, "#results .rank")[0] == "1"

  before = len(requests)  # the target applies to "more like this" too
  Select(browser.find_element(By.ID, "target")).select_by_value("captions")
  assert _searched(browser, requests, before, "/api/search/similar")["target"] == "captions"

  second = _cards(browser)[1]
  other = second.get_attribute("data-image-id")
  button = second.find_element(By.CSS_SELECTOR, "button.more-like")
  assert "more like this" in button.get_attribute("aria-label")
  before = len(requests)
  button.send_keys(Keys.ENTER)  # keyboard: the image is a button
  assert _searched(browser, requests, before, "/api/search/similar") == {
      "image_id": other, "k": "12", "target": "captions"}


def test_controls_are_labelled_and_reachable_by_keyboard(page):
  browser, _ = page
  for name in ("query", "mode", "k", "file-input", "target"):
    assert browser.execute_script(f"return document.getElementById('{name}').labels.length"), name
  assert browser.execute_script(  # hidden from sight, not from the keyboard (display: none would be)
      "const input = document.getElementById('file-input'); input.focus(); return document.activeElement === input")


def test_error_is_shown(page):
  browser, _ = page
  browser.execute_script("document.getElementById('k').value = '1000'")  # past max_k
  browser.find_element(By.ID, "query").send_keys("blue")
  browser.execute_script(  # a submit event without the input's own range check: the server's answer shows
      "document.getElementById('search-form').dispatchEvent(new Event('submit', {cancelable: true}))")
  _wait(browser, lambda d: "out of range" in d.find_element(By.ID, "status").text)
  assert "error" in browser.find_element(By.ID, "status").get_attribute("class")
