"""Effective egress: what other policies let a session pod reach beyond its own, one module per
kind of policy the dataplane enforces (NetworkPolicy, Cilium's, ClusterNetworkPolicy). Pure."""
