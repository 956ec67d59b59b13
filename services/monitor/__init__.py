"""monitor: checks the mesh's live metrics against the performance thresholds every second."""
