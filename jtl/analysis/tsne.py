"""t-SNE plots of source vs target features."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jtl.errors import DataError

_SOURCE_COLOUR = "tab:blue"
_TARGET_COLOUR = "tab:red"
# Exact t-SNE (O(N^2) per step, numpy) beats Barnes-Hut below this many points and is
# deterministic; Barnes-Hut (O(N log N), OpenMP) above.
_EXACT_MAX_POINTS = 500


def _subsample(x, labels, max_points, rng, name):
    x = np.asarray(x, dtype=np.float64)
    x = x.reshape(x.shape[0], -1) if x.ndim >= 2 else x[:, None]
    if x.shape[0] == 0 or not np.all(np.isfinite(x)):
        raise DataError(f"{name} must be a non-empty array of finite values, got shape {x.shape}")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if labels.shape[0] != x.shape[0]:
            raise DataError(f"{name}: {x.shape[0]} features but {labels.shape[0]} labels")
    if max_points is not None and x.shape[0] > max_points:
        keep = np.sort(rng.choice(x.shape[0], max_points, replace=False))
        x = x[keep]
        labels = labels[keep] if labels is not None else None
    return x, labels


def tsne_plot(
    source_features,
    target_features,
    path,
    *,
    source_labels=None,
    target_labels=None,
    max_points: int | None = 2000,
    seed: int = 0,
    perplexity: float = 30.0,
    title: str | None = None,
) -> Path:
    """Embed source and target features jointly with t-SNE and write a PNG to ``path``.

    Each domain is randomly subsampled to at most ``max_points`` points (``seed`` fixes the
    subsample and the embedding). Without labels: one panel, source blue and target red.
    With labels (either domain): a second panel coloured by class, source as circles and
    target as crosses (points of an unlabelled domain in grey). ``perplexity`` is lowered
    for tiny inputs (it must be below the number of points). Up to 500 points in all the
    exact t-SNE gradient is used, Barnes-Hut above. The PNG is written to a
    temporary file and renamed, so a failure leaves no partial file. Returns ``Path(path)``.

    van der Maaten & Hinton, "Visualizing Data using t-SNE", JMLR 2008 (scikit-learn's
    ``TSNE``); the source/target plot as in Ganin et al., JMLR 2016, and Long et al., 2015.
    """
    import matplotlib  # Figure + Agg canvas directly: no pyplot, no global backend change
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    xs, ys = _subsample(source_features, source_labels, max_points, rng, "source_features")
    xt, yt = _subsample(target_features, target_labels, max_points, rng, "target_features")
    if xs.shape[1] != xt.shape[1]:
        raise DataError(f"source features have width {xs.shape[1]}, target features {xt.shape[1]}")
    x = np.concatenate([xs, xt])
    n = x.shape[0]
    if n < 4:
        raise DataError(f"t-SNE needs at least 4 points in all, got {n}")
    perp = float(min(perplexity, max(1.0, (n - 1) / 3.0)))
    method = "exact" if n <= _EXACT_MAX_POINTS else "barnes_hut"
    emb = TSNE(n_components=2, perplexity=perp, init="pca", method=method, random_state=seed).fit_transform(x)
    es, et = emb[: len(xs)], emb[len(xs) :]

    labelled = ys is not None or yt is not None
    fig = Figure(figsize=(12 if labelled else 6, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2 if labelled else 1, 1)
    ax.scatter(es[:, 0], es[:, 1], s=6, c=_SOURCE_COLOUR, alpha=0.6, label=f"source ({len(es)})")
    ax.scatter(et[:, 0], et[:, 1], s=6, c=_TARGET_COLOUR, alpha=0.6, label=f"target ({len(et)})")
    ax.set_title("by domain")
    ax.legend(loc="best", markerscale=3)
    ax.set_xticks([])
    ax.set_yticks([])
    if labelled:
        ax2 = fig.add_subplot(1, 2, 2)
        classes = np.unique(np.concatenate([v for v in (ys, yt) if v is not None]))
        cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
        index = {c: i for i, c in enumerate(classes.tolist())}

        def colours(lab, count):
            if lab is None:
                return ["lightgrey"] * count
            return [cmap(index[v] % cmap.N) for v in lab.tolist()]

        ax2.scatter(es[:, 0], es[:, 1], s=8, c=colours(ys, len(es)), marker="o", alpha=0.6)
        ax2.scatter(et[:, 0], et[:, 1], s=14, c=colours(yt, len(et)), marker="x", alpha=0.8, linewidths=0.8)
        ax2.set_title(f"by class ({len(classes)} classes): o source, x target")
        # neutral marker handles for the domains, one colour patch per class (if few)
        handles = [
            Line2D([], [], ls="", marker="o", color="black", label="source"),
            Line2D([], [], ls="", marker="x", color="black", label="target"),
        ]
        if len(classes) <= 20:
            handles += [Patch(color=cmap(index[c] % cmap.N), label=str(c)) for c in classes.tolist()]
        ax2.legend(handles=handles, loc="best", fontsize="small", ncol=1 + len(handles) // 12)
        ax2.set_xticks([])
        ax2.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()

    from jtl.plotting import save_png  # noqa: PLC0415

    return save_png(fig, path)
