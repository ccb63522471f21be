"""The enforcement wait (``--enforcement-wait``): holding a session's containers back until its
policy is seen enforced (CONTRACT §6). ``injection`` is what admission adds to the pod,
``protocol`` what the canary says and how a round is judged, ``pin`` who may vouch.

``injection`` and ``protocol`` use the standard library only: the wait (sortie_egress.wait) runs
them inside every session pod.
"""
