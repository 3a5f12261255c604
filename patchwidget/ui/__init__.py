"""The notebook face: the protocol, the levels, the session, the view, the widget and the offline page."""
