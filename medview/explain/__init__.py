"""Saliency maps with captum, aligned pixel-for-pixel with the displayed image."""

from medview.explain.saliency import METHODS, explain, find_target_layer, saliency_for_slice

__all__ = ["METHODS", "explain", "find_target_layer", "saliency_for_slice"]
