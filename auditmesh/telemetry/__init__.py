"""What SREs see of the running mesh: metrics, traces, the live view and the performance monitor."""
