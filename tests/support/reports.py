"""Reading the HTML report the way a browser does: its plots are inlined PNGs."""

from __future__ import annotations

import base64
import re

IMG = re.compile(r'<img id="(plot-[a-z]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def inlined_plots(page: str) -> dict[str, bytes]:
    return {name: base64.b64decode(data) for name, data in IMG.findall(page)}
