"""Tiny numpy drawing helpers: filled, anti-aliased ellipses on RGB arrays.

The sandbox draws with numpy alone so that it needs no imaging library beyond PyAV.
"""

from __future__ import annotations

import numpy as np

Color = tuple[int, int, int]


def fill_ellipse(
    canvas: np.ndarray,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    color: Color,
    opacity: float = 1.0,
) -> None:
    """Paint a filled ellipse centred at (cx, cy) with radii (rx, ry) onto an HxWx3 uint8 array.

    Only the ellipse's bounding box is touched, so small shapes on big frames stay cheap.
    The edge is softened over about one pixel so shapes do not look jagged.
    """
    if rx <= 0 or ry <= 0 or opacity <= 0:
        return
    height, width = canvas.shape[:2]
    x0, x1 = max(int(cx - rx - 2), 0), min(int(cx + rx + 3), width)
    y0, y1 = max(int(cy - ry - 2), 0), min(int(cy + ry + 3), height)
    if x0 >= x1 or y0 >= y1:
        return
    ys = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    xs = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    # normalised radius; distance to the edge in pixels is about (1 - r) * min radius
    r = np.sqrt((xs / rx) ** 2 + (ys / ry) ** 2)
    alpha = np.clip((1.0 - r) * min(rx, ry) + 0.5, 0.0, 1.0) * opacity
    if not alpha.any():
        return
    region = canvas[y0:y1, x0:x1].astype(np.float32)
    paint = np.asarray(color, dtype=np.float32)[None, None, :]
    region += (paint - region) * alpha[:, :, None]
    canvas[y0:y1, x0:x1] = np.clip(region + 0.5, 0, 255).astype(np.uint8)


def fill_rect(canvas: np.ndarray, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
    """Paint an axis-aligned rectangle [x0, x1) x [y0, y1), clipped to the canvas."""
    height, width = canvas.shape[:2]
    canvas[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)] = color


def vertical_gradient(height: int, width: int, top: Color, bottom: Color) -> np.ndarray:
    """Return an HxWx3 uint8 image that fades from `top` to `bottom`."""
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    a = np.asarray(top, dtype=np.float32)[None, None, :]
    b = np.asarray(bottom, dtype=np.float32)[None, None, :]
    column = a + (b - a) * t
    return np.repeat(column, width, axis=1).round().astype(np.uint8)
