"""The studio's page in a real browser: headless Chromium (Debian's `chromium`, or the one
TTA_BROWSER names), driven by Playwright; nothing is downloaded. Screenshots go to
build/test-artifacts/ (or $TTA_TEST_ARTIFACTS)."""

import os
import shutil
from pathlib import Path

import pytest

from test_serve import _wav, pipe, server  # noqa: F401  (the tiny run served on a free loopback port)

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("TTA_TEST_ARTIFACTS", REPO / "build" / "test-artifacts"))


def _browser() -> str | None:
    for name in (os.environ.get("TTA_BROWSER"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def page():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make install)")
    executable = _browser()
    if executable is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set TTA_BROWSER): the browser test needs one")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True,
                                    args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        yield context.new_page()
        browser.close()


@pytest.mark.slow
def test_the_page_generates_and_plays_in_a_real_browser(page, server):  # noqa: F811
    base, studio, out = server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(base + "/")
    serving = page.locator("#serving")
    serving.filter(has_text="checkpoint").wait_for(timeout=30_000)
    assert "quickstart" in serving.inner_text() and studio.pipe.checkpoint in serving.inner_text()
    assert "ddim" in page.locator("#sampler option").all_inner_texts()
    assert page.input_value("#sampler") == "ddim"

    before = page.input_value("#seed")
    page.click("#random-seed")
    assert page.input_value("#seed") != before and page.input_value("#seed").isdigit()

    page.fill("#prompt", "a rising chirp")
    page.fill("#steps", "3")
    page.fill("#duration", "0.5")
    page.fill("#seed", "5")
    page.click("#generate")
    result = page.locator(".result").first
    result.locator("audio").wait_for(timeout=120_000)
    page.locator("#status", has_text="done in").wait_for(timeout=30_000)
    assert "a rising chirp" in result.locator(".prompt").inner_text()
    assert "3 steps" in result.locator(".settings").inner_text() and "seed 5" in result.locator(".settings").inner_text()

    audio = result.locator("audio")
    page.wait_for_function("a => a.readyState >= 1", arg=audio.element_handle(), timeout=30_000)
    assert abs(audio.evaluate("a => a.duration") - 0.5) < 0.02
    played = audio.evaluate("""a => a.play().then(() => new Promise(r => setTimeout(r, 300)))
                                           .then(() => ({ok: true, t: a.currentTime, ended: a.ended}))
                                           .catch(e => ({ok: false, error: String(e)}))""")
    assert played["ok"] and (played["t"] > 0 or played["ended"]), played
    img = result.locator("img.spectrogram")
    page.wait_for_function("i => i.complete && i.naturalWidth > 0", arg=img.element_handle(), timeout=30_000)
    links = result.locator(".links a")
    assert links.count() == 2 and links.first.get_attribute("download").endswith(".wav")
    with page.expect_download() as download:
        links.nth(1).click()
    assert '"prompt": "a rising chirp"' in Path(download.value.path()).read_text()
    page.screenshot(path=str(ARTIFACTS / "studio.png"), full_page=True)

    # a refusal is shown on the page, and the page goes on working
    page.click("summary >> text=Init audio")
    page.fill("#keep", "0:0.2")
    page.click("#generate")
    page.locator("#status.error").wait_for(timeout=30_000)
    assert "init_audio" in page.inner_text("#status")
    page.screenshot(path=str(ARTIFACTS / "studio-refused.png"), full_page=True)
    page.fill("#keep", "")
    page.fill("#prompt", "a low hum")
    page.click("#generate")
    page.locator(".result", has_text="a low hum").locator("audio").wait_for(timeout=120_000)
    assert page.locator(".result").count() >= 2  # the page keeps its history, newest first
    assert "a low hum" in page.locator(".result .prompt").first.inner_text()

    # an uploaded clip, varied
    clip = ARTIFACTS / "upload.wav"
    clip.write_bytes(_wav(0.6))
    page.set_input_files("#init", str(clip))
    page.fill("#strength", "0.5")
    page.click("#generate")
    varied = page.locator(".result", has_text="init upload.wav")
    varied.locator("audio").wait_for(timeout=120_000)
    assert "strength 0.5" in varied.locator(".settings").inner_text()
    page.wait_for_function("a => a.readyState >= 1 && Math.abs(a.duration - 0.6) < 0.02",
                           arg=varied.locator("audio").element_handle(), timeout=30_000)
    assert all(u.startswith(base) for u in requests), [u for u in requests if not u.startswith(base)]
