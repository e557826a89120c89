"""Data: the dual-stream construction pipeline (paper Section 3.1), loading and validation, synthetic cases."""
