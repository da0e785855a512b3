"""The pipeline's stages, one module each (`python -m pipelines.<stage>`, run by `dvc repro`)."""

import importlib.util as _util
import sys as _sys

# DVC runs each stage with the shell's `python`: outside the venv that is another interpreter,
# and the stage would die on its first import. Say so once, in one line.
_missing = [m for m in ("ray", "torch", "mlflow", "pyarrow") if _util.find_spec(m) is None]
if _missing:
    _sys.exit(f"error: {_sys.executable} has no {', '.join(_missing)}: run the pipeline from the venv "
              "`make` created (source .venv/bin/activate), or with `make run`")
