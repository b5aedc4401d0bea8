"""What each command needs beyond the base install, and the message that names the extra which installs it.

The base install is what an experiment needs to mark its runs; the exporter and the reporter come with the
``[exporter]`` and ``[reporter]`` extras. Without this check their commands would end in an ImportError traceback
that names a module, not the install command that fixes it.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

EXIT_MISSING_EXTRA = 3
"""The exit status of a command whose extra is not installed (1 is a failure at run time, 2 a usage error)."""


def missing_modules(modules: Sequence[str]) -> list[str]:
    """The modules among ``modules`` that this interpreter cannot import."""
    return [module for module in modules if importlib.util.find_spec(module) is None]


def require_extra(command: str, extra: str, modules: Sequence[str]) -> None:
    """Exit with EXIT_MISSING_EXTRA and a message naming the pip extra when ``command`` lacks one of ``modules``."""
    missing = missing_modules(modules)
    if missing:
        print(
            f"{command}: needs {', '.join(missing)}, which the [{extra}] extra installs: "
            f"pip install 'experiment-impact-tracker[{extra}]'",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_MISSING_EXTRA)
