"""Evaluation suites, one package per suite (`lloglin/evals/<name>/`), registered by name.

`python eval.py --suite NAME --config configs/NAME.py[:variant] [--checkpoint DIR] [--out DIR]`
runs one (`run_suite`) and writes report.json and PNG figures into the output folder. The `lm`
suite holds the language-model metrics the training loop reports too. See registry.py for how a
suite is written.
"""

from lloglin.evals.registry import (Suite, check_run, get_suite, register_suite,  # noqa: F401
                                    run_suite, suite_names)
from lloglin.evals.report import progress, save_figure, write_report  # noqa: F401
