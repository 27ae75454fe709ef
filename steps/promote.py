"""Entry point ``promote``: see :mod:`llmflow.promote`; `--help` lists its parameters."""

import inspect
import sys
from pathlib import Path

# Run as a plain file, the project root is not on the path. Databricks runs a script task as
# exec(compile(source, path)), with no __file__ (the code object keeps the path); MLflow's Databricks Spark
# job runs a copy of this file from elsewhere, in the project folder it changes into.
_root = Path(inspect.currentframe().f_code.co_filename).resolve().parents[1]
sys.path.insert(0, str(_root if (_root / "llmflow").is_dir() else Path.cwd()))
from llmflow.cli import step_main  # noqa: E402
from llmflow.promote import promote  # noqa: E402

main = step_main(promote, module=__name__)  # and run it, when this file is run
