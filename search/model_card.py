"""MODEL_CARD.md for an exported winner: data, config, metrics and how to load it."""

from __future__ import annotations

from typing import Any


def _metric_lines(metrics: dict) -> list[str]:
    lines = []
    for split in ("validation", "test"):
        if split in metrics:
            values = ", ".join(f"{k} {v:.4f}" for k, v in metrics[split].items())
            lines.append(f"- {split}: {values}")
    if "test" not in metrics and metrics.get("full_data"):
        lines.append("- no held-out split: the dataset has no test folder, and validation was trained on; the "
                     "sweep's figures below are those of the trial that chose this config")
    best = metrics.get("sweep_best", {})
    shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in best.items())
    lines.append(f"- during the sweep (trial {metrics.get('trial_id')}, on validation): {shown}")
    return lines


def _how_trained(metrics: dict) -> str:
    if not metrics.get("retrained", True):
        return (f"exported from its trial's best checkpoint (epoch {metrics.get('kept_epoch')}), as it is, "
                "with no retraining")
    on = "train + validation" if metrics.get("full_data") else "train"
    return (f"retrained from scratch on {on} for {metrics.get('kept_epoch')} epochs, the epoch at which its "
            "trial reached its best validation score")


def model_card(result: Any, data: Any, metrics: dict, info: dict) -> str:
    """The markdown text of the model card (a pure function of what the export wrote)."""
    config = result.config.to_dict()
    rows = "\n".join(f"| `{k}` | {v} |" for k, v in config.items())
    size = config["image_size"]
    return f"""# Model card: {info.get('name', 'tsweep sweep')} winner (trial {metrics['trial_id']})

Transfer model found by a transfer-sweep (`tsweep`) hyperparameter sweep, {_how_trained(metrics)}.

## Data
- source: `{data.source}`
- {data.summary()}
- classes (output order): {', '.join(data.class_names)}

## Metrics
{chr(10).join(_metric_lines(metrics))}

## Configuration
| key | value |
|---|---|
{rows}

## Use
The model takes raw RGB pixels (0-255, float) of shape ({size}, {size}, 3); resizing is up to you, the
backbone's preprocessing is inside the model. {'One sigmoid unit gives P(' + data.class_names[1] + ').'
if len(data.class_names) == 2 else 'A softmax gives one probability per class.'}

```bash
tsweep predict {info.get('name') and 'results/' + info['name'] + '/export' or 'export'} photo.jpg --top 3
```

```python
import json, keras, numpy as np
import tsweep.trainers.layers  # registers the Preprocess layer
model = keras.models.load_model("export/model.keras", safe_mode=True)
labels = json.load(open("export/labels.json"))
```

Without Python dependencies on tsweep, serve the TF SavedModel in `model.export/`
(`tf.saved_model.load("export/model.export").serve(images)`).
"""
