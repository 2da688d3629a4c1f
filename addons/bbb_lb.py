"""The bbb-lb addon chain, and the entry point for stock mitmproxy tools.

``mitmweb -s addons/bbb_lb.py --mode reverse:http://127.0.0.1:9 --set bbb_config=config.yaml``
"""

from __future__ import annotations

from addons.lb import BbbLoadBalancer


def make_addons() -> list[object]:
    """Every bbb-lb addon, in order; the first is the load balancer the others observe."""
    lb = BbbLoadBalancer()
    return [lb]


addons = make_addons()
