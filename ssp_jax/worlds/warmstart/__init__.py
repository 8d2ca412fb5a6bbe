"""The built-in worlds' warm start: demonstrations in the exact SSP trajectory format and the SFT
that teaches them to a random `model.init` policy, the stand-in for an instruct checkpoint."""
