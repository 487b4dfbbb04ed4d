from pathlib import Path

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
