"""JSON as the daemon writes it for people and tools: one value per line, readable UTF-8.

Its own module, with the standard library alone, so that the audit commands (``audit verify``,
``audit tail``) do not import pyarrow for it."""

from __future__ import annotations

import json
import re

# Characters that some readers take for line breaks or terminal controls: DEL, the C1 controls
# (NEL, CSI …) and the Unicode line/paragraph separators. JSON may carry them raw; we never do.
_LINE_BREAKERS = re.compile("[\x7f-\x9f\u2028\u2029]")


def json_text(value, **options) -> str:
    """``json.dumps(value, ensure_ascii=False, **options)`` with the characters above escaped
    as ``\\uXXXX``: the same JSON value, readable UTF-8, and one line stays one line in every
    reader (``str.splitlines``, a terminal, a log shipper)."""
    text = json.dumps(value, ensure_ascii=False, **options)
    return _LINE_BREAKERS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
