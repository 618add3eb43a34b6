"""Run a study whose linear baseline is aligned like its CNN (until the study context passes the aligner).

The study's CNN models get ``data#alignment`` from the study's ``alignment`` key already; its
linear baseline reads aligned frames only when :class:`~monai_emotion.study.features.DataViews`
is given a :class:`~monai_emotion.study.alignment.LinearAligner` (the one-line hook in
``study/context.py`` described in docs/alignment.md). This tool applies that hook in-process:
it runs the selected CNN models, refits the linear models with the aligner (``--force``: their
settings record does not yet include the alignment), then rebuilds results and report.

    python tools/alignment_study.py --config /tmp/al/realistic_procrustes.json --out /tmp/al/res_proc \\
        --only unseen
"""

from __future__ import annotations

import argparse

import monai_emotion.study.context as context
from monai_emotion.study.alignment import LinearAligner
from monai_emotion.study.config import load_study
from monai_emotion.study.features import DataViews
from monai_emotion.study.runner import run_study
from monai_emotion.study.stages import baseline_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", default="unseen", help="the study's --only patterns (experiments or model ids)")
    args = parser.parse_args()
    study = load_study(args.config)

    def views(experiment, *rest, **keywords):  # noqa: ANN001, ANN002, ANN003, ANN202
        if study.alignment.method != "none":
            keywords["aligner"] = LinearAligner(study.alignment, experiment)
        return DataViews(experiment, *rest, **keywords)

    context.DataViews = views
    patterns = [p for p in args.only.split(",") if p]
    run_study(args.config, out=args.out, only=",".join(f"cnn:{p}" for p in patterns))
    print("linear:", baseline_stage(args.config, args.out, [f"linear:{p}" for p in patterns], force=True, log=print))
    run_study(args.config, out=args.out, only="cnn:nothing")  # outputs from everything finished


if __name__ == "__main__":
    main()
