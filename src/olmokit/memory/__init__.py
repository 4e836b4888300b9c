"""Titans/MIRAS neural long-term memory for frozen OLMo models (placeholder; M2 owns this file)."""
