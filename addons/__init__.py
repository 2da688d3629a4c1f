"""bbb-lb's mitmproxy addons: thin adapters between flows and lb_core."""
