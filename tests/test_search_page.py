"""The search page in headless Chromium (selenium with the system chromedriver): type a query, submit, see the
result images with their captions and scores; search by an image through the file input; captions are shown as
text, never as HTML. A screenshot goes to $XMODAL_TEST_ARTIFACTS (else the test's tmp_path). Skipped when
selenium, chromium or chromedriver is missing (Debian: `apt-get install chromium chromium-driver`)."""
from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

from tests.test_search_service import COLOURS, HTML_CAPTION, NAMES, FakeEncoders, FakeIndex, captions_of, \
    colour_vector, image_id, jpeg_bytes, text_vector, write_fake_export
from xmodal_jax.serving import search_service

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _binary(*names):
  return next((path for path in map(shutil.which, names) if path), None)


CHROMIUM = _binary("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMEDRIVER = _binary("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason=(
    f"headless Chromium test needs chromium and chromedriver on PATH (found {CHROMIUM!r}, {CHROMEDRIVER!r}); "
    "Debian: apt-get install chromium chromium-driver"))


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
  export = write_fake_export(tmp_path_factory.mktemp("page"))
  app = search_service.create_app(FakeIndex(export), FakeEncoders())
  sock = search_service.open_socket("127.0.0.1", 0)
  server = search_service.uvicorn_server(app, log_level="warning", access_log=False)
  thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
  thread.start()
  deadline = time.monotonic() + 60
  while not server.started and time.monotonic() < deadline:
    time.sleep(0.02)
  assert server.started, "the search server did not start"
  yield search_service.socket_url(sock)
  server.should_exit = True
  thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser():
  from selenium.webdriver.chrome.service import Service
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
               "--no-first-run", "--disable-extensions", "--disable-background-networking"):
    options.add_argument(flag)
  driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
  driver.set_page_load_timeout(60)
  yield driver
  driver.quit()


def _wait(driver, condition, timeout=60):
  return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))


def _loaded_images(driver):
  return driver.execute_script(
      "return Array.from(document.querySelectorAll('#results .result img'))"
      ".filter(i => i.complete && i.naturalWidth > 0).length")


def test_text_query_shows_results(server_url, browser, tmp_path):
  browser.get(server_url)
  _wait(browser, lambda d: "model step" in d.find_element(By.ID, "info").text)
  box = browser.find_element(By.ID, "query")
  box.send_keys("something red")
  browser.find_element(By.ID, "search-button").click()
  _wait(browser, lambda d: _loaded_images(d) == len(COLOURS))
  cards = browser.find_elements(By.CSS_SELECTOR, "#results .result")
  first = cards[0]
  assert first.get_attribute("data-image-id") == str(image_id("red"))
  captions = [p.text for p in first.find_elements(By.CSS_SELECTOR, ".caption")]
  assert captions == captions_of("red")[:2]
  expected = float(text_vector("something red") @ colour_vector(NAMES.index("red")))
  assert first.find_element(By.CSS_SELECTOR, ".score").text == f"{expected:.3f}"
  assert "results for" in browser.find_element(By.ID, "status").text
  screenshot = os.path.join(os.environ.get("XMODAL_TEST_ARTIFACTS") or str(tmp_path), "search_page.png")
  os.makedirs(os.path.dirname(screenshot), exist_ok=True)
  assert browser.save_screenshot(screenshot)
  with open(screenshot, "rb") as f:
    png = f.read()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, len(png)
  print(f"\nsearch page screenshot: {screenshot} ({len(png)} bytes)")


def test_image_query_and_escaping(server_url, browser, tmp_path):
  browser.get(server_url)
  _wait(browser, lambda d: "model step" in d.find_element(By.ID, "info").text)
  browser.execute_script("document.getElementById('target').value = 'captions'")
  path = tmp_path / "query.png"
  path.write_bytes(jpeg_bytes(COLOURS["red"], (120, 90), "PNG"))
  browser.find_element(By.ID, "file-input").send_keys(str(path))
  _wait(browser, lambda d: _loaded_images(d) >= 3)
  texts = [p.text for p in browser.find_elements(By.CSS_SELECTOR, "#results .caption")]
  assert set(texts[:3]) == set(captions_of("red"))
  assert HTML_CAPTION in texts  # shown literally...
  assert not browser.find_elements(By.CSS_SELECTOR, "#results b, #results .caption img")  # ...not as HTML
  assert browser.find_element(By.ID, "preview").get_attribute("src").startswith("blob:")


def test_error_is_shown(server_url, browser):
  browser.get(server_url)
  _wait(browser, lambda d: "model step" in d.find_element(By.ID, "info").text)
  browser.execute_script("document.getElementById('k').value = '1000'")  # past max_k
  browser.find_element(By.ID, "query").send_keys("blue")
  browser.execute_script(  # a submit event without the input's own range check: the server's answer shows
      "document.getElementById('search-form').dispatchEvent(new Event('submit', {cancelable: true}))")
  _wait(browser, lambda d: "out of range" in d.find_element(By.ID, "status").text)
  assert "error" in browser.find_element(By.ID, "status").get_attribute("class")
