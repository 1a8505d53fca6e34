"""`kedge audit --plot`: per-source balanced accuracy and top-answer share, one chart."""
from __future__ import annotations

import os
from typing import Any

from kedge.runtime.bundle.manifest import atomic_path


def plot_audit(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kedge.runtime.reports.shortcut import TOP_SHARE_LIMIT

    groups = report["by_source"] or {"all": report}
    names = list(groups)
    balanced = [groups[n].get("balanced_accuracy", float("nan")) for n in names]
    share = [groups[n]["top_answer"]["share"] for n in names]
    chance = [groups[n].get("chance", float("nan")) for n in names]
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(names), 4), constrained_layout=True)
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], balanced, width=0.4, label="balanced accuracy", color="tab:blue")
    ax.bar([i + 0.2 for i in x], share, width=0.4, label="share of the top answer", color="tab:orange")
    ax.scatter(list(x), chance, marker="_", s=900, color="black", label="chance", zorder=3)
    ax.axhline(TOP_SHARE_LIMIT, color="tab:red", linestyle="--", linewidth=1, label="one-answer flag")
    ax.set_xticks(list(x), [f"{n}\n(n={groups[n]['n']})" for n in names])
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right", fontsize=8)
    verdict = "FLAGGED" if report.get("flags") else "passed"
    ax.set_title(f"{report.get('model', '')} shortcut audit ({report.get('split', '')}): {verdict}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
