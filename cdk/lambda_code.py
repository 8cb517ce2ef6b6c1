"""Lambda code packaged without Docker: the handler's directory plus the quiver package.

The files are copied at synth into a directory under the cloud assembly, keeping the
repo layout so a handler imports `quiver` exactly as in tests. Only sources and
package data are copied; third-party libraries come from the Lambda runtime (boto3)
and the Powertools layer, never from a pip install at synth. A function that needs a
pure-Python library beyond those (the intakes: dnspython, and dkimpy) names it in
`vendor`, and the copy installed here is packaged beside its code: synth stays
offline, and the version is the one the tests ran.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".*", "tests")
BUILD_DIR = ".quiver-lambda"


def assemble_function_code(*, repo_root: Path, function: str, outdir: Path,
                           vendor: tuple[str, ...] = ()) -> Path:
    """Copy `functions/<function>/`, `quiver/` and the `vendor` packages (top-level
    import names) into `outdir`; return the code root."""
    handler_dir = repo_root / "functions" / function
    if not (handler_dir / "handler.py").is_file():
        raise FileNotFoundError(
            f"{handler_dir / 'handler.py'} is missing: the {function} Lambda has no handler"
        )
    target = outdir / BUILD_DIR / function
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(handler_dir, target / "functions" / function, ignore=_IGNORE)
    functions_init = repo_root / "functions" / "__init__.py"
    if functions_init.is_file():
        shutil.copy2(functions_init, target / "functions" / "__init__.py")
    shutil.copytree(repo_root / "quiver", target / "quiver", ignore=_IGNORE)
    for name in vendor:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"the {function} Lambda needs the package {name!r}: "
                                    "install the project's dependencies (scripts/setup.sh)")
        source = Path(next(iter(spec.submodule_search_locations)))
        shutil.copytree(source, target / name, ignore=_IGNORE)
    return target


def handler_path(function: str) -> str:
    """The Lambda `handler` setting for `functions/<function>/handler.py:handler`."""
    return f"functions.{function}.handler.handler"
