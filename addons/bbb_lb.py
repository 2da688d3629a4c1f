"""The bbb-lb addon chain, and the entry point for stock mitmproxy tools.

``mitmweb -s addons/bbb_lb.py --mode reverse:http://127.0.0.1:9 --set bbb_config=config.yaml``
"""

from __future__ import annotations

from addons.admin import AdminListener
from addons.annotate import Annotate
from addons.capture import Capture
from addons.lb import BbbLoadBalancer
from addons.limits import ConnectionLimits


def make_addons(*, inspect: bool = True) -> list[object]:
    """The bbb-lb addons, in order; the first is the load balancer the others observe.

    ``inspect=False`` leaves out what only feeds a UI or a capture: every addon in the chain is
    offered every event of every flow, so a lean ``bbb-lb run`` carries none it does not use.
    """
    lb = BbbLoadBalancer()
    limits = ConnectionLimits(lambda: lb.config.limits if lb.config is not None else None)
    chain: list[object] = [lb, limits, AdminListener(lb)]
    if inspect:
        chain += [Annotate(lb), Capture()]
    return chain


addons = make_addons()
