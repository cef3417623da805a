"""Customer-profile aggregation proxy for Groove's Custom Profile sidebar."""

__version__ = "0.1.0"
