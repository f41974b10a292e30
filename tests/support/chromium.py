"""What headless Chromium did, read from its DevTools performance log."""

from __future__ import annotations

import json
from typing import Any


def requested_urls(chrome: Any) -> list[str]:
    """Every URL the browser requested since the log was last read (a
    selenium Chrome driver started with the performance log enabled)."""
    urls = []
    for entry in chrome.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls
