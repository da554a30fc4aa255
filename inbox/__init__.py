"""The inbox: the authenticated JSON API, its live events and the web pages people keep open."""
