"""Pictures of an audit: score histograms with the thresholds, and a grid of wrong-label suspects."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from workbench.formats.images import decode_crop
from workbench.labeled.access import LabeledSet
from workbench.labeled_audit.detect import LabelAudit

GRID_ROWS = 12
MEMBERS_SHOWN = 4
THUMB = 80


def score_histograms(audit: LabelAudit, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(-0.4, 1.0, 71)
    own = audit.own[np.isfinite(audit.own)]
    ax.hist(own, bins=bins, density=True, alpha=0.6, label=f"own label ({len(own)} faces)")
    ax.hist(audit.impostor, bins=bins, density=True, alpha=0.6, label="another identity (impostor)")
    ax.axvline(audit.wrong.threshold, color="k", label=f"wrong label below {audit.wrong.threshold:.3f}")
    ax.axvline(audit.wrong.loose, color="k", ls="--",
               label=f"... or below {audit.wrong.loose:.3f} if another fits better")
    ax.set_xlabel("cosine to the identity's centre (face left out)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def suspects_grid(labeled: LabeledSet, audit: LabelAudit, path: Path) -> int:
    """Rows of: a suspect (red frame), members of its label, and a face of its likely identity
    (green frame) if any; the most suspicious first. Returns the rows drawn."""
    import cv2

    f = audit.findings
    rows_of = sorted(f.of("wrong_label"), key=lambda i: f.score[i])[:GRID_ROWS]
    if not rows_of:
        return 0
    labels = labeled.labels
    blank = np.full((THUMB, THUMB, 3), 255, np.uint8)

    def thumb(position: int, frame: tuple[int, int, int] | None = None) -> np.ndarray:
        image = cv2.resize(decode_crop(labeled.crop_bytes(position)), (THUMB, THUMB))
        if frame is not None:
            image = cv2.copyMakeBorder(image[3:-3, 3:-3], 3, 3, 3, 3, cv2.BORDER_CONSTANT, value=frame)
        return image

    rows = []
    for i in rows_of:
        face = f.sample[i]
        members = [p for p in np.flatnonzero(labels == f.label[i]) if p != face][:MEMBERS_SHOWN]
        tiles = [thumb(face, (255, 0, 0))] + [thumb(int(p)) for p in members]
        tiles += [blank] * (1 + MEMBERS_SHOWN - len(tiles))
        other = f.other_label[i]
        likely = np.flatnonzero(labels == other)[:1] if other is not None else []
        tiles.append(thumb(int(likely[0]), (0, 160, 0)) if len(likely) else blank)
        rows.append(np.concatenate(tiles, axis=1))
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    return len(rows)
