"""Admission, split as controller-runtime splits it: decode the envelope
(review), decide (mutate, validate: pure functions of a request), encode the
answer (response). The server only moves bytes between them.
"""
