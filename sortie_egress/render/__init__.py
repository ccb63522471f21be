"""A session's policy as the object each backend writes: one pure module per kind.

``networkpolicy`` also holds what every kind shares (the DNS destination, the enforcement canary).
"""
