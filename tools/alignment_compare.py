"""The seen/unseen table and figure with and without alignment / temporal context, from study results.

Each ``--variant LABEL=FOLDER`` is one study's output folder (its ``results.csv``); the first
is the one ratios refer to. Writes ``figures/alignment_seen_unseen.png`` and
``alignment_section.json`` under ``--out`` and prints the table as markdown (docs/alignment.md).

    python tools/alignment_compare.py --variant "none, k=1=/tmp/al/res_none" \\
        --variant "procrustes, k=1=/tmp/al/res_proc" --out /tmp/al/compare
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from monai_emotion.study.alignment_report import alignment_section, load_variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True, help="LABEL=RESULTS_FOLDER")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    folders = dict(v.rsplit("=", 1) for v in args.variant)
    section = alignment_section(load_variants(folders), args.out)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "alignment_section.json").write_text(json.dumps(section, indent=1))
    table = section["tables"][0]
    print("\n".join(section["paragraphs"]) + "\n")
    print("| " + " | ".join(table["columns"]) + " |\n|" + " --- |" * len(table["columns"]))
    for row in table["rows"]:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
