"""The model card's parts for `--ensemble` and `--tta` (metrics.json "ensemble" and "tta"): the members, the
ensemble's and the single winner's scores, inference cost, and the effect of flip TTA."""

from __future__ import annotations

from typing import Any


def kept(metrics: dict) -> bool:
    """True when the export is an ensemble."""
    return bool((metrics.get("ensemble") or {}).get("kept"))


def what(metrics: dict) -> str:
    """The card's title words: "winner (trial t1)" or "ensemble of 3 trials (t1, t4, t2)"."""
    if kept(metrics):
        members = metrics["ensemble"]["members"]
        return f"ensemble of {len(members)} trials ({', '.join(m['trial_id'] for m in members)})"
    return f"winner (trial {metrics['trial_id']})"


def how_trained(metrics: dict) -> str:
    return ("an average of the best checkpoints of its member trials, each as it is (no retraining: the members "
            "were selected on their validation predictions)")


def _figures(split: dict | None) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in (split or {}).items()) or "n/a"


def ensemble_section(metrics: dict) -> str:
    """`## Ensemble`: the members and the comparison with the single winner, or why there is none."""
    summary = metrics.get("ensemble")
    if not summary:
        return ""
    if not summary.get("kept"):
        return (f"## Ensemble\n`--ensemble {summary.get('k')}` was asked for and not kept: {summary.get('reason')}; "
                "this is the single winner.\n")
    rows = "\n".join(f"| {m['name']} | {m['trial_id']} | {m['weight']} | {m['backbone']} | {m['image_size']} | "
                     f"{m['cutoff']} | {m['validation'][summary['metric']]:.4f} |" for m in summary["members"])
    ms = summary.get("ms_per_image", {})
    single = summary.get("single", {})
    lines = [f"- ensemble: validation {_figures(summary['selected'].get('validation'))}; test "
             f"{_figures(summary['selected'].get('test'))}",
             f"- single winner (trial {single.get('trial_id')}, its checkpoint): validation "
             f"{_figures(single.get('validation'))}; test {_figures(single.get('test'))}",
             f"- inference (Keras, one image at a time): {ms.get('ensemble', 0):.2f} ms per image vs "
             f"{ms.get('single', 0):.2f} ms for the single winner"]
    return f"""## Ensemble
Greedy ensemble selection with replacement (Caruana et al. 2004) over the best checkpoints of the top
{len(summary.get('candidates', []))} trials, up to {summary['k']} picks, scored by validation {summary['metric']}; a
member picked twice weighs twice. The members are the checkpoints as they are, not retrained. Members sharing
backbone, weights and image size share their frozen layers inside the model (computed once per image). The
members were chosen on validation, so the validation score is optimistic; the test split is the fair comparison.

| path | trial | weight | backbone | image size | freeze cutoff | validation {summary['metric']} |
|---|---|---|---|---|---|---|
{rows}

{chr(10).join(lines)}
"""


def tta_section(metrics: dict) -> str:
    """`## Test-time augmentation`: the scores with and without flip TTA."""
    effect = metrics.get("tta")
    if not effect:
        return ""
    lines = [f"- {split}: {_figures(effect[split]['without'])} without; {_figures(effect[split]['with'])} with"
             for split in ("validation", "test") if split in effect]
    if not lines:
        lines = ["- no held-out split to measure it on (validation was trained on and there is no test split)"]
    ms = effect.get("ms_per_image", {})
    lines.append(f"- inference: {ms.get('with', 0):.2f} ms per image with, {ms.get('without', 0):.2f} without")
    return ("## Test-time augmentation\nThe model averages its probabilities on the image and on its horizontal "
            "mirror (`--tta flip`, built-in layers; `tsweep predict` does not flip it again).\n\n"
            + "\n".join(lines) + "\n")


def cell(value: Any) -> str:
    """tsweep's own values (names, numbers, a weights path) in a table cell: only what would break it is escaped."""
    return " ".join(str(value).splitlines()).replace("|", "\\|")


def config_rows(config: dict[str, Any]) -> str:
    """The configuration table's rows: key | value, or key | one column per member for an ensemble."""
    members = config.get("ensemble")
    if not members:
        return "| key | value |\n|---|---|\n" + "\n".join(f"| `{k}` | {cell(v)} |" for k, v in config.items())
    keys = list(dict.fromkeys(k for m in members for k in m))
    head = "| key | " + " | ".join(m["trial_id"] for m in members) + " |"
    rule = "|---|" + "---|" * len(members)
    return "\n".join([head, rule] + [f"| `{k}` | " + " | ".join(cell(m.get(k, "")) for m in members) + " |"
                                     for k in keys])
