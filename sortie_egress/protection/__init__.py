"""Tamper protection as ValidatingAdmissionPolicies run inside the API server (CONTRACT §5, §7):
who may touch session objects (``tamper``), who may give a session egress (``authorship``), and
the controller's own identity narrowed (``controller_scope``). Generated into the manifests."""
