"""Admission, split as controller-runtime splits it: decode the envelope
(review), decide (mutate: a pure function of a request), encode the
answer (response). The server only moves bytes between them.
"""
