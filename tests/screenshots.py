"""Where browser tests save what they saw.

``WPD_SCREENSHOTS=1`` writes to docs/screenshots (to refresh the pictures the README shows);
otherwise a temporary folder, so an ordinary test run leaves the work tree as it was.
"""

import os
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"

SCREENSHOTS = (
    DOCS
    if os.environ.get("WPD_SCREENSHOTS") == "1"
    else Path(tempfile.mkdtemp(prefix="wpd-screenshots-"))
)
SCREENSHOTS.mkdir(parents=True, exist_ok=True)
