"""Run a study from its JSON config: ``python tools/run_study.py --config studies/demo.json``.

The same as ``python -m monai_emotion study``; see monai_emotion/study/runner.py.
"""

from __future__ import annotations

import fire

from monai_emotion.cli import run_with_clean_errors
from monai_emotion.study.runner import study_cli

if __name__ == "__main__":
    run_with_clean_errors(lambda: fire.Fire(study_cli))
