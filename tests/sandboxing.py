"""What the sandbox tests share: :data:`needs_sandbox`, which skips a test where no grading
sandbox can be made here (no bubblewrap, or no user namespaces), with the reason."""

from __future__ import annotations

from typing import Optional

import pytest

from course.sandbox import SandboxUnavailable, check_sandbox

__all__ = ["needs_sandbox", "sandbox_reason"]


def sandbox_reason() -> Optional[str]:
    """Why no sandbox can be made here, or None when one can."""
    try:
        check_sandbox()
    except SandboxUnavailable as err:
        return str(err)
    return None


_REASON = sandbox_reason()
needs_sandbox = pytest.mark.skipif(_REASON is not None, reason=f"no sandbox here: {_REASON}")
