"""scaler: grows and shrinks the processors from load reports and the wedding calendar."""
