"""The companion controller: every session pod gets exactly its NetworkPolicy, then its gate goes.

Split like the webhook: ``desired`` decides (pure), ``cache`` and ``queue``
hold state, ``reconciler`` does the writes, ``main`` wires it to a cluster.
"""
