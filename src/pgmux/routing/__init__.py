"""Read/write routing: classify a query, keep per-host health, pick a host. Pure: no I/O, time passed in.

The `classify` function is not re-exported: it would shadow the `pgmux.routing.classify` module.
"""

from __future__ import annotations

from pgmux.routing.balancer import DEFAULT_POLICY, POLICIES, Policy, make_policy
from pgmux.routing.classify import DEFAULT_WRITE_FUNCTIONS, Classifier, Target, Verdict
from pgmux.routing.health import HostState, Role, choose

__all__ = [
    "DEFAULT_POLICY",
    "DEFAULT_WRITE_FUNCTIONS",
    "POLICIES",
    "Classifier",
    "HostState",
    "Policy",
    "Role",
    "Target",
    "Verdict",
    "choose",
    "make_policy",
]
