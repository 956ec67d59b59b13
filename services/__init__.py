"""The auditmesh services, one package each; they import auditmesh and auditpb, never each other."""
