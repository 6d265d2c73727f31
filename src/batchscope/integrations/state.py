"""Callback state inside framework checkpoints.

Lightning stores a callback's ``state_dict`` with ``torch.save``; the Hugging Face Trainer stores
callback state in ``trainer_state.json``, so there it must be text. A state that is already plain
JSON is kept as it is (readable in the file); anything else (tensors) is ``torch.save``d and
base64-encoded.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import torch


def pack_state(state: Any) -> Any:
    try:
        json.dumps(state, allow_nan=True)
        return {"json": state}
    except (TypeError, ValueError):
        buf = io.BytesIO()
        torch.save(state, buf)
        return {"torch_base64": base64.b64encode(buf.getvalue()).decode("ascii")}


def unpack_state(packed: Any) -> Any:
    if "json" in packed:
        return packed["json"]
    data = base64.b64decode(packed["torch_base64"])
    return torch.load(io.BytesIO(data), weights_only=True)
