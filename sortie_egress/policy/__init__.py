"""The rule vocabulary: an egress policy's text in, its canonical form (the session's pin) out.

Pure: no I/O. ``model`` parses and normalises the annotation, ``complement`` turns an allowlist
into the denies a deny-wins dataplane needs, ``public_suffix`` and ``strict_json`` guard names
and text that come from untrusted pods.
"""
