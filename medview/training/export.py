"""Write a trained model as a complete model folder, atomically.

The folder is assembled in a hidden temporary directory next to its destination and
renamed into place in one step, so a crash, a cancel or a full disk never leaves a
half-written model; leftovers of an interrupted export are removed at the next start.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace

from medview.core.safeio import fsync_dir
from medview.models.card import (
    CARD_FILE,
    GRAPH_FILE,
    README_FILE,
    SCOPE_FILE,
    WEIGHTS_FILE,
    Card,
    WeightsSpec,
    checked_section,
    json_safe,
    reliance_section,
)
from medview.models.staging import LOCK_FILE, TMP_PREFIX, clean_stale_exports, staging_folder
from medview.models.weights import save_weights

log = logging.getLogger(__name__)

__all__ = ["TMP_PREFIX", "clean_stale_exports", "export_model", "render_readme"]


def render_readme(card: Card) -> str:
    """A human-readable README from the card (metrics with CIs, data, recipe, limits)."""
    lines = [f"# {card.name} ({card.id} {card.version})", "",
             "**Research use only - not for diagnostic use.** " + "; ".join(card.flags or []),
             "", "## Intended use", card.intended_use, "",
             "## Out of scope", card.out_of_scope, "",
             "## Classes"]
    lines += [f"- `{c.name}`: {c.description}" for c in card.classes]
    lines += ["", "## Decision", card.decision.rule]
    lines += [f"Threshold: {k} >= {v:.4f}" for k, v in card.thresholds.items()]
    lines += ["", f"Calibration: temperature {card.calibration.temperature:.3f} "
              f"({card.calibration.method}).", "", "## Metrics (95% bootstrap CIs, "
              "resampled by patient)"]
    for split, m in card.metrics.items():
        lines += ["", f"### {split} ({m['n']} images, {m['n_patients']} patients; "
                  + ", ".join(f"{k}: {v}" for k, v in m["counts"].items()) + ")", "",
                  "| metric | value | 95% CI |", "|---|---|---|"]
        for key in ("auc", "sensitivity", "specificity", "accuracy", "f1", "ece"):
            if key in m:
                v = m[key]
                lines.append(f"| {key} | {v['value']} | {v['ci95'][0]} - {v['ci95'][1]} |")
        lines.append(f"\nConfusion matrix (rows true, columns predicted): "
                     f"{m['confusion_matrix']}")
    td = card.training_data
    lines += ["", "## Training data", f"Source: {td['source']}. Split rule: {td['split_rule']}.",
              f"Counts: {json.dumps(td['counts'])}"]
    parent = card.parent
    lines += ["", "## Lineage", f"Parent: {parent.get('kind')} {parent.get('id') or ''} "
              f"(weights sha256 {parent.get('weights_sha256')}).",
              f"Architecture: {card.architecture.name}.",
              f"Weights sha256: {card.weights.sha256}.", ""]
    lines += checked_section(card)
    lines += reliance_section(card)
    if card.graph is not None:
        lines += [graph_section(card.graph)]
    lines += ["## Limitations"]
    lines += [f"- {x}" for x in card.limitations]
    rec = card.training
    lines += ["", "## Training recipe",
              f"Strategy {rec.get('strategy')}, {rec.get('epochs')} epochs (best epoch "
              f"{rec.get('best_epoch')}), image size {rec.get('image_size')}, lr {rec.get('lr')},"
              f" batch {rec.get('batch_size')}, seed {rec.get('seed')}"
              + (f"; {num.get('precision')}, {num.get('memory_format')} convolutions"
                 if isinstance(num := rec.get("numerics"), dict) else "") + ".", ""]
    return "\n".join(lines) + "\n"


GRAPH_SECTION = "## Exported graph (fast CPU inference)"


def graph_section(spec) -> str:
    """The README's words on the exported graph (``card.graph``)."""
    speed = spec.speed or {}
    lines = [GRAPH_SECTION, "",
             f"`{spec.file}` (ONNX opset {spec.opset}, sha256 `{spec.sha256}`) is the same "
             "network for ONNX Runtime's CPU provider, with the logits, the pre-logit "
             "embedding, the last feature maps and the trust gate's stage statistics as "
             "outputs of one pass.",
             f"Largest difference from PyTorch in any class probability: "
             f"{spec.max_abs_diff:.2g} on {spec.checked_on} inputs (validation images and "
             f"random inputs); tolerance {spec.tolerance:.0e}.",
             (f"Grad-CAM is computed from the graph (global average pool + linear head "
              f"`{spec.cam_head}`, verified)." if spec.cam_head else
              "Grad-CAM runs on PyTorch (the head is not a verified pool + linear layer).")]
    if speed:
        lines.append(f"Measured at export, batch 1 on the exporting CPU: PyTorch "
                     f"{speed['torch_ms']} ms, graph {speed['graph_ms']} ms.")
    return "\n".join(lines) + "\n"


def export_model(model, card: Card | dict, out_dir: str, extra_readme: str = "",
                 gate=None, graph: bool | tuple | None = True, check_inputs=None) -> str:
    """Write ``out_dir/<card id>/`` (card.json, weights.safetensors, scope.safetensors,
    graph.onnx, README.md) atomically.

    ``card`` is a :class:`Card` (or its JSON document); its weights hash (and with a trust
    ``gate``, the hash of the gate's statistics) is filled in here. With ``graph``, the
    model is also exported as an ONNX graph for the fast CPU backend, checked against
    torch on ``check_inputs`` (prepared validation images) and random inputs (``graph``
    may also be the ``(bytes, GraphSpec)`` of :func:`prepare_graph`, made earlier in a
    worker thread; ``None``/``False``: no graph); a model
    that cannot be exported, or whose graph disagrees, is saved without one (it runs on
    torch) and the reason is logged. Refuses to overwrite an existing model folder.
    Returns the new folder's path.
    """
    if not isinstance(card, Card):
        card = Card.from_dict(json_safe(card))
    if (card.scope is None) != (gate is None):
        raise ValueError("a card with a scope section needs its trust gate, and a gate "
                         "needs the card's scope section")
    os.makedirs(out_dir, exist_ok=True)
    clean_stale_exports(out_dir)
    final = os.path.join(out_dir, card.id)
    if os.path.exists(final):
        raise FileExistsError(f"a model named {card.id!r} already exists in {out_dir}")
    with staging_folder(out_dir) as tmp:
        # one metadata key only: safetensors writes several in random order, which would
        # change the file's hash from run to run
        sha = save_weights(model, os.path.join(tmp, WEIGHTS_FILE),
                           metadata={"medview_model": f"{card.id} {card.version}"})
        card = card.replace(weights=WeightsSpec(WEIGHTS_FILE, sha))
        if gate is not None:
            data = gate.to_bytes()
            with open(os.path.join(tmp, SCOPE_FILE), "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            card = card.replace(scope=replace(card.scope, sha256=gate.sha256()))
        if graph is True:
            graph = prepare_graph(model, card, gate, check_inputs)
        if graph:
            data, spec = graph
            spec = replace(spec, weights_sha256=sha)  # bound to exactly these weights
            with open(os.path.join(tmp, GRAPH_FILE), "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            card = card.replace(graph=spec)
        _write_synced(os.path.join(tmp, CARD_FILE),
                      json.dumps(json_safe(card.to_dict()), indent=2, allow_nan=False) + "\n")
        _write_synced(os.path.join(tmp, README_FILE), render_readme(card) + extra_readme)
        os.remove(os.path.join(tmp, LOCK_FILE))
        os.rename(tmp, final)
        fsync_dir(out_dir)
    return final


def prepare_graph(model, card: Card, gate=None, check_inputs=None, data: bytes | None = None):
    """``(bytes, GraphSpec)`` of the model's exported graph (``data``: exported already,
    checked here), or None (with the reason logged) when the model cannot be exported or
    its graph disagrees with torch."""
    from medview.inference.graph_export import GraphExportError, export_graph

    stages = tuple(gate.stages) if gate is not None else ()
    try:
        return export_graph(model, card, stages, check_inputs, data=data)
    except GraphExportError as exc:
        log.warning("model %s saved without an exported graph: %s", card.id, exc)
        return None


def _write_synced(path: str, text: str) -> None:
    with open(path, "x", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
