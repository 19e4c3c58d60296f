#!/usr/bin/env python3
"""Rewrite every JSON-schema block of docs/protocol.md from voxguard.protocol.SCHEMAS
(the one place the schemas are defined); prose and examples stay as written.

    .venv/bin/python scripts/sync_protocol_docs.py [--check]

With --check it changes nothing and exits 1 when the document is out of date.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from voxguard.protocol import SCHEMAS

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


def synced(text: str) -> str:
    def repl(m: re.Match) -> str:
        block = json.loads(m.group(1))
        if isinstance(block, dict) and "$schema" in block and block.get("title") in SCHEMAS:
            return "```json\n" + json.dumps(SCHEMAS[block["title"]], indent=2) + "\n```"
        return m.group(0)

    return re.sub(r"```json\n(.*?)```", repl, text, flags=re.S)


def main() -> int:
    text = DOC.read_text()
    new = synced(text)
    if "--check" in sys.argv[1:]:
        return int(new != text)
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
