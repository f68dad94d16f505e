"""Headless Chromium for the explorer tests: Debian's chromium and chromedriver, never a download.

Missing browser: the tests skip with the install hint, or fail with it under CI=true
(``make test`` installs both through its ``browser`` target).
"""

from __future__ import annotations

import os

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL_HINT = "apt-get install -y chromium chromium-driver (or run `make test`, which installs them)"
WINDOW = (1280, 900)


def require_browser() -> None:
    """Skip (fail under CI=true) with the install hint unless Chromium and its driver are installed."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if not missing:
        return
    problem = f"{' and '.join(missing)} missing: {INSTALL_HINT}"
    if os.environ.get("CI") == "true":
        pytest.fail(problem, pytrace=False)
    pytest.skip(problem)


def start_chromium() -> webdriver.Chrome:
    """A headless Chromium (WINDOW sized) whose console messages ``get_log("browser")`` returns."""
    require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager is not consulted, so nothing is downloaded.
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
