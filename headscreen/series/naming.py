"""Parse training steps (and tokens) from checkpoint folder or revision names.

Recognised: `step100`, `step_000100`, `step-100`, `checkpoint-100`, `checkpoint_100`,
`step100-tokens4B`, `stage1-step100-tokens1B`, `global_step100`, and a bare `100`.
"""

from __future__ import annotations

import re

_TOKENS = re.compile(r"tokens(\d+(?:\.\d+)?)([KMBT]?)", re.IGNORECASE)
_STEP = re.compile(r"(?:^|[-_/])(?:global_)?(?:step|checkpoint|ckpt)[-_]?(\d+)(?=$|[-_/])", re.IGNORECASE)
_BARE = re.compile(r"^\d+$")
_SCALE = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


def parse_step(name: str) -> int | None:
    """The training step in a folder/revision name, or None if the name carries none."""
    if _BARE.match(name):
        return int(name)
    m = _STEP.search(name)
    return int(m.group(1)) if m else None


def parse_tokens(name: str) -> int | None:
    """Tokens seen, from a `tokens4B`-style suffix (rounded as written in the name), else None."""
    m = _TOKENS.search(name)
    if not m:
        return None
    return int(float(m.group(1)) * _SCALE[m.group(2).upper()])
