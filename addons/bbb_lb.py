"""Entry point for stock mitmproxy tools: ``mitmweb -s addons/bbb_lb.py --set bbb_config=config.yaml``."""

from addons.lb import BbbLoadBalancer

addons = [BbbLoadBalancer()]
