"""The demo dataset: a small synthetic studyforrest tree made once in the user cache folder."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from monai_emotion.runtime import user_cache_dir

__all__ = ["DEMO", "ensure_demo_dataset"]

#: the demo dataset: small enough for a 2-core CPU to train 50 epochs in minutes. Its planted
#: signal is 2.5x the generator's default (realistic, harder) strengths, so that ~240 training
#: volumes suffice; docs/validation.md measures the defaults.
DEMO: dict[str, Any] = {
    "subjects": 1,
    "scale": 4,
    "volumes_per_run": 90,
    "seed": 7,
    "class_strength": {"HAPPINESS": 2.0, "SADNESS": 2.0, "FEAR": 2.5, "LOVE": 1.5, "ANGER": 2.0},
}



def ensure_demo_dataset(root: str | os.PathLike | None = None, **overrides: Any) -> Path:
    """Generate the synthetic demo dataset once; later calls reuse it."""
    from monai_emotion.data.synthetic.generate import make_synthetic

    params = {**DEMO, **overrides}
    tag = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    root = Path(root) if root else user_cache_dir() / f"demo-{tag}"
    done = root / ".complete"
    if not done.is_file():
        print(f"generating the synthetic demo dataset in {root} (once)", flush=True)
        # overwrite: a folder without .complete is an interrupted generation of ours
        make_synthetic(root, progress=False, overwrite=True, **params)
        done.write_text(json.dumps(params) + "\n")
    return root
