"""The free-space check every backend makes before downloading."""

import os

from patchd.core import errors
from patchd.core.model import Plan

# Kept free beyond what the plan needs: the snapshot shares blocks with the
# root, but every file the transaction rewrites costs its size again.
SPACE_MARGIN_BYTES = 64 * 1024 * 1024


def require_space(root: str, plan: Plan) -> None:
    """Refuse a plan whose downloads and growth do not fit on ``root``'s filesystem."""
    stat = os.statvfs(root)
    free = stat.f_bavail * stat.f_frsize
    needed = plan.download_bytes + max(plan.install_delta_bytes, 0) + SPACE_MARGIN_BYTES
    if free < needed:
        raise errors.InsufficientSpace(
            "{} MiB free on {}, the transaction needs about {} MiB".format(
                free >> 20, root, needed >> 20))
