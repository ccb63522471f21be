"""Results in the formats other tools read: OpenReports (openreports.io/v1alpha1 Report)."""
