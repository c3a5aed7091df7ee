"""The JSON Schema of policy files, generated from the pydantic models, for editors (yaml-language-server).

The committed copy is ``policies/policy.schema.json``; regenerate it after changing ``spec.py``::

    python -m memos.schedulers.schema            # writes policies/policy.schema.json
    python -m memos.schedulers.schema OUT.json   # writes elsewhere

A unit test fails when the committed file and the models disagree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from memos.schedulers.spec import PolicySpec

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "policies" / "policy.schema.json"


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a policy file, as validation sees input."""
    schema = PolicySpec.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": "Generated from memos.schedulers.spec by `python -m memos.schedulers.schema`; do not edit.",
        **schema,
    }


def render_schema() -> str:
    """The schema as the committed file's text (stable key order, trailing newline)."""
    return json.dumps(policy_json_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    target = Path(argv[0]) if argv else DEFAULT_PATH
    target.write_text(render_schema(), encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
