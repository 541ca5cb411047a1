"""The features the trust gate reads, taken from the classifier's own forward pass.

One forward gives the logits, the pre-logit embedding (timm's ``forward_head(...,
pre_logits=True)``, the same computation as ``model(x)`` split in two) and, through
forward hooks, the channel means and standard deviations of a few feature stages. The
predictor, the training engine (which fits the gate) and the benchmark all use this, so
the gate is fitted on exactly what it later scores.
"""

from __future__ import annotations

import numpy as np

from medview.inference import scope
from medview.models.weights import WeightsError


def gate_stages(model, n: int = scope.STAGES_USED) -> tuple[str, ...]:
    """The stages ``multi_depth`` reads: the input thumbnail (normalised per film), then
    the last ``n`` feature stages timm lists for ``model`` (``feature_info``), as module
    names."""
    info = getattr(model, "feature_info", None) or []
    names = [d.get("module") for d in info if isinstance(d, dict) and d.get("module")]
    modules = dict(model.named_modules())
    found = tuple(n_ for n_ in names if n_ in modules)
    return (scope.INPUT_LAYOUT_STAGE, *(found[-n:] if n else ()))


def thumbnails(x, stage: str):
    """The gate's input part ``stage`` (one of :data:`scope.INPUT_STAGES`) of a prepared
    batch (N, C, H, W) torch tensor: the first channel average-pooled to 8 x 8, flattened,
    normalised per film for :data:`scope.INPUT_LAYOUT_STAGE`."""
    import torch

    t = torch.nn.functional.adaptive_avg_pool2d(x[:, :1].float(), scope.THUMBNAIL).flatten(1)
    if stage == scope.INPUT_LAYOUT_STAGE:
        t = t - t.mean(1, keepdim=True)
        t = t / t.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-6)
    return t


class StageTap:
    """Channel means and standard deviations of named modules' outputs, captured by
    forward hooks during the classifier's own forward pass (only while ``active``, so
    saliency and training forwards pay nothing)."""

    def __init__(self, model, stages: tuple[str, ...]) -> None:
        modules = dict(model.named_modules())  # a lookup, never getattr on card text
        missing = [s for s in stages if s not in modules and s not in scope.INPUT_STAGES]
        if missing:
            raise WeightsError(f"trust gate: the card names feature stage {missing[0]!r}, "
                               f"which this architecture does not have")
        self.stages = tuple(stages)
        self.active = False
        self.captured: dict = {}
        self._handles = [modules[name].register_forward_hook(self._hook(name))
                         for name in stages if name not in scope.INPUT_STAGES]

    def _hook(self, name: str):
        import torch

        def hook(_module, _inputs, out) -> None:
            if self.active and isinstance(out, torch.Tensor) and out.ndim in (3, 4):
                # a CNN map (B, C, H, W), or a transformer's tokens (B, N, C);
                # two passes (mean, then centred squares): faster than torch.std_mean
                # on these small maps
                flat = out.float().flatten(2) if out.ndim == 4 else out.float().transpose(1, 2)
                mean = flat.mean(2)
                std = (flat - mean[..., None]).pow(2).mean(2).sqrt()
                self.captured[name] = torch.cat([mean, std], 1)

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def forward(self, model, x, scorer: TorchScorer | None = None) -> dict[str, np.ndarray]:
        """Logits, pre-logits and the stages' statistics of one batch (inference mode);
        with a ``scorer``, only the logits and the gate's score (under ``SCORE``)."""
        import torch

        with torch.inference_mode():
            self.captured = {}
            self.active = True
            try:
                pre = model.forward_head(model.forward_features(x), pre_logits=True)
                logits = model.get_classifier()(pre)
            finally:
                self.active = False
            out = {scope.LOGITS: logits, scope.PRE_LOGITS: pre, **self.captured}
            for stage in scope.INPUT_STAGES:
                if stage in self.stages:  # the grey levels' layout
                    out[stage] = thumbnails(x, stage)
            if scorer is not None:  # a prediction needs only the logits and the score
                return {scope.LOGITS: logits.float().cpu().numpy(),
                        SCORE: scorer(out).cpu().numpy()}
            return {k: v.float().cpu().numpy() for k, v in out.items()}


#: The key of the gate's score in a forward pass's features (see ``TorchScorer``).
SCORE = "ood_score"


class TorchScorer:
    """A ``multi_depth`` gate's score computed with torch inside the forward pass.

    The same score as :meth:`medview.inference.scope.ScopeGate.score` (a test keeps them
    equal), folded into few operations: with the precision ``P = L L^T`` (Cholesky), a
    part's normalised distance is ``|x L' - m L'| - mu / sd`` where ``L' = L / sd``, so
    each part is one product, one difference and one norm. float32, statistics
    converted once. It runs in torch's thread pool: scoring with numpy's BLAS between
    two forward passes made both thread pools fight over the CPU and slowed the next
    forward."""

    def __init__(self, gate: scope.ScopeGate, device) -> None:
        import torch

        if gate.method != "multi_depth":
            raise ValueError("only multi_depth gates are scored in torch")
        self.parts = []
        for name in gate.stages:
            st = gate._float64(name)
            sd = max(float(gate.stats[f"{name}/z_std"][0]), 1e-12)
            lower = np.linalg.cholesky(st["precision"]) / sd
            self.parts.append((
                name, torch.as_tensor(lower.astype(np.float32), device=device),
                torch.as_tensor((st["means"] @ lower).astype(np.float32), device=device),
                float(gate.stats[f"{name}/z_mean"][0]) / sd))

    def __call__(self, feats: dict):
        import torch

        zs = []
        for name, lower, mean_l, offset in self.parts:
            x = feats[name]
            if x.shape[1] != lower.shape[0]:
                raise WeightsError(f"trust gate: statistics for {name!r} expect "
                                   f"{lower.shape[0]} features, the model gives {x.shape[1]}")
            # (N, 1, D) - (1, K, D): the distance to each class mean; the nearest counts
            dist = torch.linalg.vector_norm((x @ lower)[:, None, :] - mean_l[None], dim=2)
            zs.append(dist.min(1).values - offset)
        return torch.stack(zs).max(0).values
