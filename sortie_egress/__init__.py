"""sortie-egress: per-session egress enforcement for Sortie session pods.

The package is split so that everything deciding *what* to do is pure
(policy, render, patch, admission) and everything that talks to the world
(server, controller, cli, certs) sits at the edges and only moves data.
"""

__version__ = "0.1.0"
