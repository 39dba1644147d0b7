"""Compiled kernels of fastfire (private: the Python layer validates, these trust their inputs)."""
