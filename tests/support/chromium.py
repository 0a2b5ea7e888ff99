"""Drive the system's Chromium (Debian's ``chromium`` + ``chromium-driver``) with Selenium.

Nothing is downloaded: the browser and its driver come from the system (``.ci/run`` installs them
when absent); Selenium is told both paths, so its driver manager never runs. Also a tool for the
screenshots in ``docs/``: ``python -m tests.support.chromium URL_OR_FILE OUT.png [WIDTH HEIGHT]``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver", "/usr/lib/chromium/chromedriver")


def find_chromium() -> tuple[str, str] | None:
    """(browser, driver) paths, or None when either is missing."""
    browser = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    driver = next((path for name in DRIVERS if (path := shutil.which(name))), None)
    return (browser, driver) if browser and driver else None


def start_driver(browser: str, driver: str, profile: Path, width: int = 1280, height: int = 900):
    os.environ["SE_OFFLINE"] = "true"  # belt and braces: Selenium Manager must never fetch anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def console_errors(driver) -> list[str]:
    """Console messages at error level since the last call (the log is drained when read)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def full_page_screenshot(driver, out: Path, width: int = 1280) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(max(int(height) + 40, 600), 6000))
    driver.save_screenshot(str(out))


def main(argv: list[str]) -> None:
    target, out = argv[0], Path(argv[1])
    width = int(argv[2]) if len(argv) > 2 else 1280
    found = find_chromium()
    if found is None:
        sys.exit("chromium and chromedriver not found")
    url = target if "://" in target else Path(target).resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        driver = start_driver(*found, Path(profile), width=width)
        try:
            driver.get(url)
            full_page_screenshot(driver, out, width)
        finally:
            driver.quit()


if __name__ == "__main__":
    main(sys.argv[1:])
