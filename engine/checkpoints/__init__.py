"""Loading checkpoint files safely and strictly."""
