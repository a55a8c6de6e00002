"""May a preset import Python code? Only when the user says so, as transformers' `trust_remote_code`.

The `python` objective names a function by import path, and importing a module runs it. A preset is data a
user may have been sent, so `lmforge train --trust-code` (or `trust_code=True` in the Python API) is the
opt-in. Reading a finished run (generate, eval, export, the resume check) validates its preset without
importing anything: the objective never runs there.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator, Literal

Policy = Literal["refuse", "trust", "skip"]
_POLICY: ContextVar[Policy] = ContextVar("lmforge_code_policy", default="refuse")


@contextlib.contextmanager
def code_policy(policy: Policy) -> Iterator[None]:
    """Within the block, preset validation refuses, imports ("trust"), or leaves alone ("skip") code a preset names."""
    token = _POLICY.set(policy)
    try:
        yield
    finally:
        _POLICY.reset(token)


def may_import(path: str) -> bool:
    """True: import `path` now; False: leave it alone (it will not run). A ValueError when it is refused."""
    policy = _POLICY.get()
    if policy == "refuse":
        raise ValueError(
            f"names Python code to import ({path!r}); a preset runs code only when you trust it: "
            "`lmforge train --trust-code ...`, or trust_code=True in the Python API"
        )
    return policy == "trust"
