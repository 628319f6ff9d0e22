"""The check every backend makes before executing a plan: does the package
manager, marking exactly the plan's versions, arrive at exactly that plan?"""

from patchd.core import errors
from patchd.core.model import Plan


def refuse_drift(marked: Plan, plan: Plan, broken: bool = False) -> None:
    """Refuse when what the native tool marked differs from ``plan`` (the
    repositories or the installed packages changed since it was made)."""
    if broken or _keys(marked) != _keys(plan):
        raise errors.DependencyProblem(
            "the repositories or the installed packages changed since the "
            "plan was made; the plan no longer applies as is",
            "Plan again; nothing was changed.")


def _keys(plan: Plan):
    return {(c.name, c.arch, c.new, c.action) for c in plan.changes}
