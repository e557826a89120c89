"""Data: synthetic cases now; the dual-stream construction pipeline lives beside it."""
