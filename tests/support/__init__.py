"""Test support: fakes and throwaway labs for tests and benchmarks/ (not part of the harness package)."""
