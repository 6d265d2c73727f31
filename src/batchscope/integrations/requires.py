"""Optional frameworks: imported on first use, with one line naming the extra when missing."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or fail with the install line for batchscope's ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{feature} needs {module.split('.')[0]}: pip install 'batchscope[{extra}]'") from None
