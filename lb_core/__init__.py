"""bbb-lb core: the load balancer's logic, free of any mitmproxy import."""

__version__ = "0.1.0"
