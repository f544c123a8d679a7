"""The C++ SDK for native processors built outside jobforge (see docs/native-processors.md).

A module built against the headers in ``get_include()`` implements ``jobforge::Processor`` and
returns ``jobforge::sdk::processor_capsule(...)``; ``Engine.register_native(type, capsule)``
registers it in a running engine, without rebuilding jobforge::

    cmake -DJOBFORGE_INCLUDE_DIR="$(python -c 'import jobforge.sdk as s; print(s.get_include())')"
"""

from __future__ import annotations

from pathlib import Path

from . import _core

#: The SDK ABI version this engine accepts (``JOBFORGE_SDK_ABI_VERSION`` in ``jobforge/sdk.hpp``).
ABI_VERSION: int = _core.SDK_ABI_VERSION
#: The name a processor capsule must carry.
CAPSULE_NAME: str = _core.SDK_CAPSULE_NAME
#: The C++ standard library ABI the engine was built with; a module must match it.
STDLIB: str = _core.SDK_STDLIB


def get_include() -> str:
    """The folder holding ``jobforge/sdk.hpp`` and the other public headers: inside the installed
    package (wheels ship them), else the source tree's ``cpp/include`` (editable installs)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "include", here.parent.parent / "cpp" / "include"):
        if (candidate / "jobforge" / "sdk.hpp").is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"the jobforge C++ headers are not installed next to {here} (jobforge/include)"
    )


__all__ = ["ABI_VERSION", "CAPSULE_NAME", "STDLIB", "get_include"]
