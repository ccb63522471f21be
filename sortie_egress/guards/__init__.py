"""The cluster-wide policies the install ships and the controller verifies before it releases a
session on Cilium: the node guard and the session baseline."""
