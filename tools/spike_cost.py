"""What motion spikes cost a synthetic study's within-subject decoders, with and without censoring.

The study's synthetic world is made twice, with its spikes and with ``spikes_per_run=0`` (the
generator draws every property from its own random stream, so nothing else changes), and
each is cached with ``outliers "censor"`` and ``"none"``. The linear baseline and the nilearn
peer are fitted on every within-subject model; the table gives balanced accuracy per subject.

    python tools/spike_cost.py --study studies/realistic.json
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import fire


def spike_cost(study: str = "studies/realistic.json", out: str = "/tmp/spike_cost", peers: bool = True) -> None:
    """Print the table (also ``out/spike_cost.csv``)."""
    import pandas as pd

    from monai_emotion.study.baseline import LinearBaseline
    from monai_emotion.study.config import load_study
    from monai_emotion.study.context import prepare_context
    from monai_emotion.study.peers import NilearnPeer, PeerSettings
    from monai_emotion.study.scoring import balanced_accuracy_of

    source = json.loads(Path(study).read_text())
    rows = []
    for spikes in ("as generated", 0):
        for outliers in ("censor", "none"):
            config = json.loads(json.dumps(source))
            if spikes == 0:
                config["data"]["synthetic"]["spikes_per_run"] = 0
            config.setdefault("preprocessing", {})["outliers"] = outliers
            config["name"] = f"spikes-{spikes}-{outliers}".replace(" ", "_")
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
                json.dump(config, fh)
            loaded = load_study(fh.name)
            ctx = prepare_context(loaded, Path(out) / config["name"], log=lambda line: None)
            decoders = {"linear": LinearBaseline(ctx.views, loaded.baseline, ctx.classes)}
            if peers:
                decoders["nilearn"] = NilearnPeer(ctx.views, PeerSettings(), ctx.classes)
            for spec in ctx.plan.of("within"):
                censored = sum(len(r.censored) for r in ctx.views.table(spec.subjects).runs)
                for name, decoder in decoders.items():
                    frame = decoder.fit_predict(spec)[spec.test_sets[0].name]
                    rows.append({"spikes": spikes, "outliers": outliers, "decoder": name, "subject": spec.subjects[0],
                                 "censored_volumes": censored,
                                 "balanced_accuracy": balanced_accuracy_of(frame, ctx.classes)})
                    print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    Path(out).mkdir(parents=True, exist_ok=True)
    table.to_csv(Path(out) / "spike_cost.csv", index=False)
    wide = table.pivot_table(index=["decoder", "subject"], columns=["spikes", "outliers"], values="balanced_accuracy")
    print(wide.round(3).to_string())


if __name__ == "__main__":
    fire.Fire(spike_cost)
