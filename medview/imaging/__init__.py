"""Pure numpy image processing: LUTs, windows, geometry, rendering. No torch, no Qt."""

from medview.imaging.geometry import orientation_labels
from medview.imaging.lut import (
    apply_modality_lut,
    apply_voi_lut_table,
    apply_window,
    palette_to_rgb,
    ybr_full_to_rgb,
)
from medview.imaging.render import modality_slice, render_slice, value_at
from medview.imaging.window import (
    auto_window,
    default_window,
    full_range_window,
    window_presets,
)

__all__ = [
    "apply_modality_lut",
    "apply_voi_lut_table",
    "apply_window",
    "auto_window",
    "default_window",
    "full_range_window",
    "modality_slice",
    "orientation_labels",
    "palette_to_rgb",
    "render_slice",
    "value_at",
    "window_presets",
    "ybr_full_to_rgb",
]
