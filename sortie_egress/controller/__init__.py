"""The companion controller: every session pod gets exactly its policy object (a NetworkPolicy, or
the chosen backend's kind), then its gate goes.

Split like the webhook: ``plan`` decides (pure, through the backend: backends/), the informers' stores (kube/informer.py) and
``queue`` hold state, ``reconciler`` does the writes, ``main`` wires it to a cluster.
"""
