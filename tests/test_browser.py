"""The web UI in a real browser: Debian's chromium, driven by Playwright.

Generate, a two-expert Coop run and a PNG dropped into PNG info, each checked on the page
and saved as a screenshot (to ``$PANGU_DRAW_SCREENSHOTS`` when set: the README's
pictures are made this way, see ``make screenshots``). Where no chromium is installed the
test is skipped, except under CI (``CI`` set), where a missing browser is a failure:
``make test`` installs it (``scripts/install_browser.sh``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("gradio")
playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 180_000  # a run on a busy 2-core machine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def page(ui_server):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium: `make test` installs it with scripts/install_browser.sh")
        pytest.skip("no chromium installed (scripts/install_browser.sh installs it)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(ui_server[0])
        page.get_by_role("button", name="Generate", exact=True).wait_for(timeout=60_000)
        yield page
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("PANGU_DRAW_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def shot(page, path: Path) -> None:
    """A full-page screenshot, as JPEG: small enough to commit for the README."""
    page.screenshot(path=path, full_page=True, type="jpeg", quality=70)


def test_generate_in_the_browser(page, shots):
    page.get_by_label("Prompt (one per line)").fill("red heart\ngrinning face")
    page.get_by_role("spinbutton", name="Fixed seed").fill("3")
    page.get_by_role("radio", name="fixed").check()
    page.locator("#generate-run").click()
    gallery = page.locator("#generate-gallery img")
    gallery.first.wait_for(timeout=WAIT_MS)
    page.get_by_text("2 image(s), seeds 3..4").wait_for(timeout=WAIT_MS)
    assert gallery.count() >= 2
    page.get_by_text("History").click()
    page.locator("#history img").first.wait_for(timeout=30_000)
    shot(page, shots / "generate.jpg")


def test_coop_two_experts_in_the_browser(page, shots):
    page.get_by_role("tab", name="Coop").click()
    page.get_by_role("button", name="Build recipe from the form").click()
    recipe = page.locator("#coop-recipe")
    recipe.get_by_text('model = "zoo:generator_b"').wait_for(timeout=30_000)
    page.locator("#coop-run").click()
    page.locator("#coop-image img").wait_for(timeout=WAIT_MS)
    page.get_by_text("seed 0:").wait_for(timeout=WAIT_MS)
    shot(page, shots / "coop.jpg")


def test_png_info_in_the_browser(page, shots, ui_server):
    from pangudraw.imageio import read_record

    # a Generate result (the shared server's folder also holds other tests' PNGs)
    made = [p for p in ui_server[1].glob("*.png") if "prompt" in read_record(p)]
    assert made, "the generate test saves PNGs first"
    prompt_made = read_record(made[0])["prompt"]
    page.get_by_role("tab", name="PNG info").click()
    page.locator("#png-drop input[type=file]").set_input_files(str(made[0]))
    parameters = page.locator("#png-parameters textarea")
    page.wait_for_function(
        "el => el.value.includes('Seed:')", arg=parameters.element_handle(), timeout=30_000
    )
    assert "pangu-draw" in parameters.input_value()
    shot(page, shots / "png-info.jpg")
    page.get_by_role("button", name="Send to Generate").click()
    prompt = page.get_by_label("Prompt (one per line)")
    prompt.wait_for(timeout=30_000)
    assert prompt.input_value() == prompt_made


def test_models_tab_in_the_browser(page, shots):
    page.get_by_role("tab", name="Models").click()
    page.get_by_role("button", name="texture").first.click()
    page.get_by_text("pangu-draw texture generator").first.wait_for(timeout=30_000)
    shot(page, shots / "models.jpg")


def test_edit_in_the_browser(page, shots):
    """A result sent from Generate to Edit, a stroke drawn on it, inpainted."""
    page.get_by_role("tab", name="Generate").click()
    page.locator("#generate-gallery img").first.click()
    page.locator("#generate-send-edit").click()
    editor = page.locator("#edit-editor")
    editor.locator("canvas").first.wait_for(timeout=30_000)
    box = editor.locator("canvas").first.bounding_box()
    x, y = box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + box["width"] * 0.2, y, steps=8)
    page.mouse.up()
    page.locator("#edit-prompt textarea").fill("grinning face")
    page.locator("#edit-run").click()
    page.locator("#edit-gallery img").first.wait_for(timeout=WAIT_MS)
    page.get_by_text("1 image(s)").last.wait_for(timeout=WAIT_MS)
    shot(page, shots / "edit.jpg")
