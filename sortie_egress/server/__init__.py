"""The HTTPS edge: TLS, routing, metrics and logs around the pure admission core."""
