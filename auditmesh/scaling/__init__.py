"""Scaling: the policy, the calendar forecast, processor membership, load reports and the
scaler's engine and actuators (issue 13; the service is services/scaler)."""
