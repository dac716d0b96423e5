"""Pure-PyTorch twins of every fused op: the truth the tests hold each backend to."""
