from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (real FER2013, FER+, RAF-DB labels), or skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present: {SHARED_DATA} does not exist (it is beside every msfer checkout in CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def fer2013_root(shared_data, tmp_path_factory) -> Path:
    """FER2013 (per-class folders) extracted once per test session from ../shared/data/fer2013.tar.gz."""
    import tarfile

    out = tmp_path_factory.mktemp("fer2013")
    with tarfile.open(shared_data / "fer2013.tar.gz") as tar:
        tar.extractall(out, filter="data")
    return out / "fer2013"


@pytest.fixture(scope="session")
def ferplus_root(shared_data, tmp_path_factory) -> Path:
    """FER+ extracted once per test session from ../shared/data/ferplus.tar.gz (its `data` folder)."""
    import tarfile

    out = tmp_path_factory.mktemp("ferplus")
    with tarfile.open(shared_data / "ferplus.tar.gz") as tar:
        tar.extractall(out, filter="data")
    return out / "ferplus" / "data"


def random_checkpoint(name: str, path: Path) -> Path:
    """A checkpoint of the registered model ``name`` with random weights (seed 0), saved as the engine saves one."""
    from msfer.model.checkpoint import random_checkpoint as save_random

    return save_random(path, name, seed=0)


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory) -> Path:
    """A checkpoint of the CPU model with random weights (for the inference tests)."""
    return random_checkpoint("msfer_mobilenetv2", tmp_path_factory.mktemp("inference_model") / "random.pt")


@pytest.fixture(scope="session")
def classifier_weights(tmp_path_factory) -> Path:
    """A checkpoint of the plain classifier (no regions: boxes B x 0 x 4) with random weights."""
    return random_checkpoint("classifier_mobilenetv2", tmp_path_factory.mktemp("inference_model") / "classifier.pt")


@pytest.fixture(scope="session")
def recognizer(random_weights):
    from msfer import EmotionRecognizer

    return EmotionRecognizer(random_weights)


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """A real photo with one face (NASA, public domain), as scikit-image ships it."""
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()


@pytest.fixture(scope="session")
def astronaut_file(tmp_path_factory, astronaut) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("photos") / "astronaut.jpg"
    Image.fromarray(astronaut).save(path, quality=95)
    return path


@pytest.fixture
def open_page():
    """A function ``open_page(url, until)`` -> a Playwright page in headless Chromium (Debian's), returned once an
    element matches the CSS selector ``until`` (default: the page says it has finished, ``body[data-state]`` being
    "done" or "error"), within 180 s of real time; a selector, not a script, as the page's policy allows no eval.
    Waiting on the page's own word, not on a time budget, keeps the test independent of how loaded the machine is."""
    import shutil

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])

        def open_page(url: str, until: str = "body[data-state=done], body[data-state=error]"):
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.goto(url)
            page.wait_for_selector(until, timeout=180_000)
            return page

        try:
            yield open_page
        finally:
            browser.close()
