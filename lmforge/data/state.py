"""Pipeline state as plain Python containers, so checkpoints load with torch.load(weights_only=True)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def plain(obj: Any) -> Any:
    """Recursively turn numpy/torch arrays into lists and numpy scalars into Python numbers; keys stay as they are."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj.tolist()
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
