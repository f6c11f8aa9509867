"""MODEL_CARD.md for an exported winner: data, config, metrics, its formats with their parity figures, and how
to use each format with its own runtime alone (no tsweep)."""

from __future__ import annotations

import re
from typing import Any

from tsweep.search import ensemble_card
from tsweep.search.formats import FORMATS

# What Markdown would read as markup in a class name (tables, emphasis, code, HTML, links, headings): each is
# backslash-escaped (CommonMark escapes any ASCII punctuation that way); line breaks become spaces.
_MARKDOWN = re.compile(r"([\\|*_`<>\[\]#])")


def md_text(value: Any) -> str:
    """`value` as literal Markdown text: on one line, with no character read as markup."""
    return _MARKDOWN.sub(r"\\\1", " ".join(str(value).splitlines()))


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
    if ensemble_card.kept(metrics):
        return ensemble_card.how_trained(metrics)
    if not metrics.get("retrained", True):
        return (f"exported from its trial's best checkpoint (epoch {metrics.get('kept_epoch')}), as it is, "
                "with no retraining")
    on = "train + validation" if metrics.get("full_data") else "train"
    return (f"retrained from scratch on {on} for {metrics.get('kept_epoch')} epochs, the epoch at which its "
            "trial reached its best validation score")


def model_card(result: Any, data: Any, metrics: dict, info: dict) -> str:
    """The markdown text of the model card (a pure function of what the export wrote)."""
    names = list(metrics.get("parity", {}).get("formats") or ("keras", "saved_model"))
    config = result.config.to_dict()
    classes = [md_text(c) for c in data.class_names]
    size = config["image_size"]
    return f"""# Model card: {info.get('name', 'tsweep sweep')} {ensemble_card.what(metrics)}

Transfer model found by a transfer-sweep (`tsweep`) hyperparameter sweep, {_how_trained(metrics)}.

## Data
- source: `{data.source}`
- {data.summary()}
- classes (output order): {', '.join(classes)}

## Metrics
{chr(10).join(_metric_lines(metrics))}

{ensemble_card.ensemble_section(metrics)}
{ensemble_card.tta_section(metrics)}
{_formats_section(metrics)}

## Configuration
{ensemble_card.config_rows(config)}

## Use
The model takes raw RGB pixels (0-255, float32) of shape ({size}, {size}, 3), batched; resizing is up to you
(tsweep resizes with bilinear filtering, not keeping the aspect ratio), the backbone's preprocessing is inside
the model, in Keras's own layers. {'One sigmoid unit gives P(' + classes[1] + ').'
if len(classes) == 2 else 'A softmax gives one probability per class, in `labels.json` order.'}

```bash
tsweep predict {info.get('name') and 'results/' + info['name'] + '/export' or 'export'} photo.jpg --top 3
```

Without tsweep: each snippet below needs only numpy, Pillow (to read the photo) and its format's own runtime
(pip: {', '.join(dict.fromkeys(f'`{_PACKAGES[_runtime(n)]}`' for n in names))}); paths are relative to the
export's parent folder. Each prints {{class: probability}} for `photo.jpg`.

{chr(10).join(_use_block(n, size, list(data.class_names)) for n in names)}"""


# Per runtime: its import and the lines that turn `pixels` (S, S, 3) into `out`, the model's outputs for it.
_RUNTIME_CODE = {
    "keras": ("import keras", [
        'model = keras.saving.load_model("export/model.keras", safe_mode=True)',
        "out = model.predict(pixels[None], verbose=0)[0]"]),
    "saved_model": ("import tensorflow as tf", [
        'model = tf.saved_model.load("export/model.export")',
        "out = model.serve(tf.constant(pixels[None])).numpy()[0]"]),
    "litert": ("from ai_edge_litert.interpreter import Interpreter", [
        'interpreter = Interpreter(model_path="export/{path}")',
        "interpreter.allocate_tensors()",
        'interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels[None])',
        "interpreter.invoke()",
        'out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]']),
    "onnx": ("import onnxruntime", [
        'session = onnxruntime.InferenceSession("export/model.onnx", providers=["CPUExecutionProvider"])',
        "out = session.run(None, {session.get_inputs()[0].name: pixels[None]})[0][0]"]),
}
_PACKAGES = {"keras": "keras", "saved_model": "tensorflow", "litert": "ai-edge-litert", "onnx": "onnxruntime"}


def _runtime(name: str) -> str:
    return "litert" if name.startswith("litert") else name


def snippet(name: str, size: int, class_names: list[str]) -> str:
    """Python that classifies photo.jpg with format `name` of the export, with only numpy, Pillow and that
    format's runtime; prints {class: probability}. Paths are relative to the export's parent folder."""
    imports, lines = _RUNTIME_CODE[_runtime(name)]
    if len(class_names) == 2:
        tail = [f"probs = [1.0 - float(out[0]), float(out[0])]  # one sigmoid unit: P({class_names[1]!r})"]
    else:
        tail = ["probs = out.tolist()  # softmax, in labels.json order"]
    code = ["import json", "", "import numpy as np", imports, "from PIL import Image", "",
            'labels = json.load(open("export/labels.json"))',
            f'image = Image.open("photo.jpg").convert("RGB").resize(({size}, {size}), Image.BILINEAR)',
            'pixels = np.asarray(image, dtype="float32")  # raw RGB, 0-255',
            *(line.replace("{path}", FORMATS[name].path) for line in lines), *tail, "print(dict(zip(labels, probs)))"]
    return "\n".join(code) + "\n"


def _use_block(name: str, size: int, class_names: list[str]) -> str:
    fmt = FORMATS[name]
    return f"### {name}: `{fmt.path}`, with {fmt.runtime}\n\n```python\n{snippet(name, size, class_names)}```\n"


def _formats_section(metrics: dict) -> str:
    parity = metrics.get("parity")
    if not parity:
        return "## Formats\n- `model.keras` (Keras) and `model.export/` (TF SavedModel)"
    rows = []
    for name, f in parity["formats"].items():
        accuracy = f"{f['accuracy']:.4f}" + (f" (drop {f['accuracy_drop']:+.4f})" if "accuracy_drop" in f else "")
        rows.append(f"| {name} | `{f['file']}` | {f['runtime']} | {f['max_abs_diff']:.2g} | "
                    f"{f['top1_agreement']:.2%} | {accuracy} | {f['bytes'] / 1e6:.2f} MB | {f['ms_per_image']:.2f} |")
    split = parity["split"]
    return f"""## Formats
Every file holds the same model, made of Keras's own layers only. Each was run by its own runtime on the
{parity['images']} {split} images and compared with the trained Keras model (max |probability difference|,
top-1 agreement; float formats must agree on top-1 and within {parity['tolerance']:g}, int8 reports its
accuracy drop instead: the Keras model's accuracy minus its own); ms per image is one image at a time on the
exporting machine.

| format | file | runtime | max abs diff | top-1 agreement | accuracy | size | ms / image |
|---|---|---|---|---|---|---|---|
""" + "\n".join(rows)
