"""The handlers of every BBB call, one module per kind of call; importing this registers them all.

Find a call's handler by its name: ``grep -rn '"getMeetings"' lb_core/handlers``. The table itself is
``CALLS`` (``lb_core/calls.py``): name -> handler, methods, content types, JSON-ness, route.
"""

from lb_core.calls import CALLS, CallSpec, allowed_methods, is_upload
from lb_core.handlers import create, listings, mconf, meetings, recordings

__all__ = ["CALLS", "CallSpec", "allowed_methods", "is_upload", "create", "listings", "mconf", "meetings", "recordings"]
