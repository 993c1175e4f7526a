import pytest

from tests.support.browser import CHROMIUM


@pytest.fixture(scope="module")
def chromium() -> str:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium. Install it with `make chromium` "
            "(as root), or: sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium",
            pytrace=False,
        )
    return str(CHROMIUM)
