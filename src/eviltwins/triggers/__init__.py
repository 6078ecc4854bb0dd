"""Triggers: a mask m and a pattern r, stamped as psi(x, r; m) = x (1 - m) + r m.

This is the one stamping function of the toolkit (Pang et al., CCS 2020, Section 5.1.2): every
attack, detector and metric stamps through :func:`stamp` / :meth:`Trigger.stamp`, batched.

The square watermark (:meth:`Trigger.square`) follows the paper's trigger (Section 5.1): a square of side
``round(size * W)`` pixels (at least 1), default bottom-right, with m = 1 - p on covered pixels
for transparency p (p = 0 is opaque). A trigger from another toolkit, a pattern image with a mask
image or an opacity alpha = 1 - p, is :meth:`Trigger.from_image` (:mod:`.images`), and
:func:`load_trigger` (:mod:`.sources`) reads what a ``--trigger`` argument names (either kind).
The tanh change of variables used by the optimisers is :class:`TriggerParams`
(r = (tanh(w_r) + 1) / 2, m = (tanh(w_m) + 1) / 2, confined to a region).
"""

from eviltwins.triggers.files import MAX_HEADER_BYTES, TRIGGER_TENSORS, trigger_path
from eviltwins.triggers.images import check_alpha, image_suffixes, image_trigger, is_image_path
from eviltwins.triggers.params import TriggerParams
from eviltwins.triggers.shapes import (
    MAX_TRIGGER_CHANNELS,
    MAX_TRIGGER_SIDE,
    PATTERNS,
    POSITIONS,
    Position,
    check_image_shape,
    check_size,
    check_transparency,
    parse_position,
    save_png,
    side_pixels,
)
from eviltwins.triggers.sources import load_trigger, refuse_without_trigger
from eviltwins.triggers.trigger import Trigger, stamp

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_TRIGGER_CHANNELS",
    "MAX_TRIGGER_SIDE",
    "PATTERNS",
    "POSITIONS",
    "Position",
    "TRIGGER_TENSORS",
    "Trigger",
    "TriggerParams",
    "check_alpha",
    "check_image_shape",
    "check_size",
    "check_transparency",
    "image_suffixes",
    "image_trigger",
    "is_image_path",
    "load_trigger",
    "parse_position",
    "refuse_without_trigger",
    "save_png",
    "side_pixels",
    "stamp",
    "trigger_path",
]
