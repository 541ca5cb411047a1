"""Saving a trained model: the one path of ``medview train`` (one process or torchrun's
rank 0) and the wizard's Save. The card is finished (the name and a user-chosen threshold,
with the test metrics re-evaluated at it), the model folder is exported atomically with
its trust gate and checked graph, and the run's checkpoint is dropped only once the
folder is in place."""

from __future__ import annotations

import contextlib
import os
import shutil

from medview.training.engine import final_card
from medview.training.export import export_model
from medview.training.types import TrainResult


def drop_checkpoint(checkpoint_dir: str) -> None:
    """Remove a finished run's checkpoint (and the checkpoints folder, when now empty)."""
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(checkpoint_dir))


def save_trained(result: TrainResult, out: str, *, name: str | None = None,
                 threshold: float | None = None, n_bootstrap: int = 1000,
                 checkpoint_dir: str | None = None) -> str:
    """Export ``result`` into a new folder under ``out``; returns the folder. ``name``
    renames the model (its id follows); ``threshold`` is a user's operating point on the
    positive class. The checkpoint in ``checkpoint_dir`` is removed after the export."""
    card = result.card
    if name is not None or threshold is not None:
        card = final_card(result, name or card.name, threshold, n_bootstrap)
    folder = export_model(result.model, card, out, gate=result.gate, graph=result.graph)
    if checkpoint_dir:
        drop_checkpoint(checkpoint_dir)
    return folder
