"""Per-class accuracy tables."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jtl.errors import DataError


def per_class_accuracy(logits, labels, class_names: Sequence[str] | None = None) -> list[dict]:
    """One row per class: ``{"class", "index", "support", "correct", "accuracy",
    "confused_with"}``; ``accuracy`` is ``correct / support`` (NaN for a class with no
    samples) and ``confused_with`` the most frequent wrong prediction for that class
    (``None`` if there is none). Predictions are ``argmax_c logits``."""
    z = np.asarray(logits)
    y = np.asarray(labels)
    if z.ndim != 2 or y.shape != (z.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"per_class_accuracy needs (N, C) logits and N integer labels, got {z.shape} and {y.shape}")
    c = z.shape[1]
    if class_names is None:
        class_names = [str(i) for i in range(c)]
    if len(class_names) != c:
        raise DataError(f"{len(class_names)} class names for {c} logits per sample")
    if y.size and (y.min() < 0 or y.max() >= c):
        raise DataError(f"labels outside [0, {c}): min {y.min()}, max {y.max()}")
    pred = np.argmax(z, axis=1)
    confusion = np.zeros((c, c), np.int64)
    np.add.at(confusion, (y, pred), 1)
    rows = []
    for k in range(c):
        support = int(confusion[k].sum())
        correct = int(confusion[k, k])
        wrong = confusion[k].copy()
        wrong[k] = 0
        rows.append(
            {
                "class": str(class_names[k]),
                "index": k,
                "support": support,
                "correct": correct,
                "accuracy": correct / support if support else float("nan"),
                "confused_with": str(class_names[int(wrong.argmax())]) if wrong.any() else None,
            }
        )
    return rows


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def per_class_table(
    logits,
    labels,
    class_names: Sequence[str] | None = None,
    *,
    title: str | None = None,
    sort_by_accuracy: bool = False,
) -> str:
    """Markdown table of per-class accuracy (in %), with overall and mean per-class
    accuracy (classes with samples only) at the bottom. ``sort_by_accuracy`` lists the
    worst classes first."""
    rows = per_class_accuracy(logits, labels, class_names)
    if sort_by_accuracy:
        rows = sorted(rows, key=lambda r: (np.nan_to_num(r["accuracy"], nan=np.inf), r["index"]))
    lines = [f"### {_cell(title)}", ""] if title else []
    lines += ["| class | n | correct | accuracy (%) | most confused with |", "|---|---:|---:|---:|---|"]
    for r in rows:
        acc = "-" if r["support"] == 0 else f"{100 * r['accuracy']:.1f}"
        conf = _cell(r["confused_with"]) if r["confused_with"] is not None else "-"
        lines.append(f"| {_cell(r['class'])} | {r['support']} | {r['correct']} | {acc} | {conf} |")
    total = sum(r["support"] for r in rows)
    correct = sum(r["correct"] for r in rows)
    present = [r["accuracy"] for r in rows if r["support"]]
    overall = f"{100 * correct / total:.1f}" if total else "-"
    mean_pc = f"{100 * float(np.mean(present)):.1f}" if present else "-"
    lines.append(f"| **overall** | {total} | {correct} | {overall} | |")
    lines.append(f"| **mean per class** | {len(present)} classes | | {mean_pc} | |")
    return "\n".join(lines)
